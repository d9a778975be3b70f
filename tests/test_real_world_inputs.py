"""Issue 13's reproducers 1, 2, 3 and 8: inputs users bring (Meta params.json and multi-shard
consolidated.NN.pth folders, tied checkpoints that store the head anyway, config.json files that
omit optional keys), each held to transformers' LlamaForCausalLM or to Meta's layout rules, never
to our own code: the Meta tensors are written here by Meta's split rules and turned into
transformers' names by the permutation of transformers' convert_llama_weights_to_hf.py."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.emitted import import_file, import_package
from codegen.verifier.runners.onnx_runner import OnnxRunner

# The issue's input: a Llama-3.2-style params.json (use_scaled_rope, no factor, no context).
ISSUE_PARAMS = {"dim": 128, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "multiple_of": 32,
                "ffn_dim_multiplier": 1.5, "rope_theta": 500000.0, "use_scaled_rope": True,
                "vocab_size": 256}  # fmt: skip
# The same model as a transformers config, written by hand from Meta's rules: FFN width
# multiple_of * ceil(multiplier * int(8 * dim / 3) / multiple_of) = 32 * ceil(1.5 * 341 / 32) =
# 512; Meta's ModelArgs default norm_eps 1e-5; use_scaled_rope's constants (low 1, high 4,
# original context 8192) with Llama 3.2 1B/3B's factor 32.
ISSUE_HF = {"vocab_size": 256, "hidden_size": 128, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 512,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_refusal(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    return result.output


def reference_model(config: dict, seed: int = 0) -> LlamaForCausalLM:
    """transformers' model of `config` with random weights (norm gains around 1, not 1)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(0.1 * torch.randn_like(parameter))
            if name.endswith("norm.weight"):
                parameter.add_(1.0)
    return model


def transformers_logits(model: LlamaForCausalLM, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def torch_logits(package, folder: Path, ids: np.ndarray) -> np.ndarray:
    model = package.Model().eval()
    package.load_checkpoint(model, folder)
    with torch.no_grad():
        return model(torch.from_numpy(ids)).numpy()


# --- reproducer 1: params.json with use_scaled_rope and no factor -------------------------------


def test_reproducer_1_params_json_without_factor_or_context_exits_2(tmp_path):
    """Before: factor 8 and context 2048 were taken silently. Now: one line naming the values."""
    folder = tmp_path / "Llama-3.2-meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(ISSUE_PARAMS))
    message = one_line_refusal(invoke("show", "--spec", str(folder / "params.json")))
    assert "--rope-scaling-factor" in message and "8 for Llama 3.1, 32 for Llama 3.2" in message
    out = tmp_path / "out"
    build = ["build", "--spec", str(folder), "--target", "torch", "--out", str(out)]
    message = one_line_refusal(invoke(*build, "--rope-scaling-factor", "32"))
    assert "--max-seq-len" in message and "131072" in message
    assert not out.exists()
    # given twice and differently (the option against the release's config.json beside it)
    (folder / "sibling").mkdir()
    (folder / "sibling" / "params.json").write_text(json.dumps(ISSUE_PARAMS))
    (folder / "sibling" / "config.json").write_text(json.dumps({"model_type": "llama", **ISSUE_HF}))
    sibling = str(folder / "sibling" / "params.json")
    message = one_line_refusal(invoke("show", "--spec", sibling, "--rope-scaling-factor", "8"))
    assert "--rope-scaling-factor says 8.0" in message and "config.json says 32.0" in message


@pytest.mark.parametrize("source", ["option", "sibling config.json"])
def test_reproducer_1_factor_32_matches_transformers_at_300_tokens(source, tmp_path):
    """With the factor given (or read from the release's config.json beside params.json), torch
    logits at 300 tokens match transformers' LlamaForCausalLM with factor 32, where factor 8
    (the old silent value) differs well beyond the tolerance."""
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(ISSUE_PARAMS))
    options = ["--rope-scaling-factor", "32", "--max-seq-len", "512"]
    if source != "option":
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", **ISSUE_HF}))
        options = []
    out = tmp_path / "out"
    built = invoke("build", "--spec", str(folder / "params.json"), *options, "--target", "torch",
                   "--out", str(out))  # fmt: skip
    assert built.exit_code == 0, built.output
    reference = reference_model(ISSUE_HF)
    weights = tmp_path / "hf"
    reference.save_pretrained(weights)
    ids = np.random.default_rng(0).integers(0, 256, (1, 300))
    expected = transformers_logits(reference, ids)
    actual = torch_logits(import_package(out / "torch"), weights, ids)
    assert oracle.relative_error(actual, expected) <= 1e-5
    factor_8 = {**ISSUE_HF, "rope_scaling": {**ISSUE_HF["rope_scaling"], "factor": 8.0}}
    other = reference_model(factor_8)
    other.load_state_dict(reference.state_dict())
    assert oracle.relative_error(transformers_logits(other, ids), expected) > 1e-3


# --- reproducer 2: multi-shard Meta checkpoints -------------------------------------------------

# Meta's model-parallel split dims (llama/model.py: ColumnParallelLinear dim 0, RowParallelLinear
# dim 1; tok_embeddings: ParallelEmbedding dim 1 in LLaMA 1/2, VocabParallelEmbedding dim 0 in
# Llama 3), written here from Meta's code, not read from the compiler's table.
META_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
EMBEDDING_SPLIT = {"llama2": 1, "llama3": 0}
META_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32,
               "norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 96, "max_seq_len": 128}  # fmt: skip
HF_OF_META = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 192,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128}  # fmt: skip


def meta_tensors(params: dict, hidden: int, seed: int, tied: bool) -> dict[str, torch.Tensor]:
    """A whole (unsharded) Meta state dict with random weights, in Meta's names and layout."""
    generator = torch.Generator().manual_seed(seed)
    dim, vocab = params["dim"], params["vocab_size"]
    head_dim = dim // params["n_heads"]
    kv = params["n_kv_heads"] * head_dim
    shapes = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    if not tied:
        shapes["output.weight"] = (vocab, dim)
    for i in range(params["n_layers"]):
        shapes |= {f"layers.{i}.attention.wq.weight": (dim, dim),
                   f"layers.{i}.attention.wk.weight": (kv, dim),
                   f"layers.{i}.attention.wv.weight": (kv, dim),
                   f"layers.{i}.attention.wo.weight": (dim, dim),
                   f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                   f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
                   f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                   f"layers.{i}.attention_norm.weight": (dim,),
                   f"layers.{i}.ffn_norm.weight": (dim,)}  # fmt: skip
    tensors = {}
    for name, shape in shapes.items():
        value = 0.1 * torch.randn(shape, generator=generator)
        tensors[name] = value + 1.0 if name.endswith("norm.weight") else value
    return tensors


def write_meta_shards(tensors: dict, folder: Path, shards: int, layout: str) -> None:
    """consolidated.NN.pth split by Meta's rules (norms replicated in every shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[dict] = [{} for _ in range(shards)]
    for name, value in tensors.items():
        kind = name.split(".")[-2]
        dim = EMBEDDING_SPLIT[layout] if kind == "tok_embeddings" else META_SPLIT.get(kind)
        pieces = value.chunk(shards, dim) if dim is not None else [value] * shards
        for part, piece in zip(parts, pieces, strict=True):
            part[name] = piece.clone()
    for i, part in enumerate(parts):
        torch.save(part, folder / f"consolidated.{i:02d}.pth")


def permute(w: torch.Tensor, n_heads: int, dim1: int, dim2: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf.py: Meta's interleaved q/k rows -> HF's halves."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_state_dict(tensors: dict, params: dict) -> dict[str, torch.Tensor]:
    """Meta's state dict under transformers' names, as convert_llama_weights_to_hf.py maps it."""
    dim, heads, kv_heads = params["dim"], params["n_heads"], params["n_kv_heads"]
    kv = kv_heads * dim // heads
    state = {"model.embed_tokens.weight": tensors["tok_embeddings.weight"],
             "model.norm.weight": tensors["norm.weight"]}  # fmt: skip
    if "output.weight" in tensors:
        state["lm_head.weight"] = tensors["output.weight"]
    for i in range(params["n_layers"]):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        state |= {
            h + "self_attn.q_proj.weight": permute(tensors[m + "attention.wq.weight"], heads, dim, dim),
            h + "self_attn.k_proj.weight": permute(tensors[m + "attention.wk.weight"], kv_heads, kv, dim),
            h + "self_attn.v_proj.weight": tensors[m + "attention.wv.weight"],
            h + "self_attn.o_proj.weight": tensors[m + "attention.wo.weight"],
            h + "mlp.gate_proj.weight": tensors[m + "feed_forward.w1.weight"],
            h + "mlp.down_proj.weight": tensors[m + "feed_forward.w2.weight"],
            h + "mlp.up_proj.weight": tensors[m + "feed_forward.w3.weight"],
            h + "input_layernorm.weight": tensors[m + "attention_norm.weight"],
            h + "post_attention_layernorm.weight": tensors[m + "ffn_norm.weight"],
        }  # fmt: skip
    return state


@pytest.fixture(scope="module")
def meta_torch(tmp_path_factory):
    """The torch package of META_PARAMS, built from its params.json."""
    folder = tmp_path_factory.mktemp("meta-spec")
    (folder / "params.json").write_text(json.dumps(META_PARAMS))
    built = invoke("build", "--spec", str(folder / "params.json"), "--target", "torch",
                   "--out", str(folder / "out"))  # fmt: skip
    assert built.exit_code == 0, built.output
    return import_package(folder / "out" / "torch")


@pytest.mark.parametrize("layout", ["llama2", "llama3"])
def test_reproducer_2_two_meta_shards_load_in_both_embedding_layouts(meta_torch, layout, tmp_path):
    """Before: a two-shard Llama-3-layout folder (embedding split along the vocabulary) failed
    as if a tensor were transposed. Now both layouts load, to transformers' logits."""
    tensors = meta_tensors(META_PARAMS, HF_OF_META["intermediate_size"], seed=1, tied=False)
    write_meta_shards(tensors, tmp_path / "meta", 2, layout)
    (tmp_path / "meta" / "params.json").write_text(json.dumps(META_PARAMS))
    reference = LlamaForCausalLM(LlamaConfig(**HF_OF_META)).eval()
    reference.load_state_dict(hf_state_dict(tensors, META_PARAMS))
    ids = np.random.default_rng(2).integers(0, 96, (2, 40))
    actual = torch_logits(meta_torch, tmp_path / "meta", ids)
    assert oracle.relative_error(actual, transformers_logits(reference, ids)) <= 1e-5


def test_reproducer_2_shards_that_join_to_no_model_shape_are_refused(meta_torch, tmp_path):
    """Shards of another model (here a wider embedding) are named with their shapes and the
    model's, not joined into a wrong tensor."""
    tensors = meta_tensors(META_PARAMS, HF_OF_META["intermediate_size"], seed=1, tied=False)
    tensors["tok_embeddings.weight"] = torch.zeros(96, 80)
    write_meta_shards(tensors, tmp_path / "meta", 2, "llama2")
    with pytest.raises(meta_torch.CheckpointError) as caught:
        meta_torch.load_checkpoint(meta_torch.Model(), tmp_path / "meta")
    message = str(caught.value)
    assert "'tok_embeddings.weight'" in message and "[96, 40]" in message and "[96, 64]" in message
    assert "\n" not in message


def test_reproducer_1_and_2_the_issue_model_as_meta_shards(tmp_path):
    """The issue's params.json with factor 32 given, loaded from two Llama-3-layout Meta shards:
    transformers' logits at 300 tokens. A params.json beside the shards that states another
    factor (Meta's later `rope_scaling_factor` key) is refused by the loader."""
    out = tmp_path / "out"
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "params.json").write_text(json.dumps(ISSUE_PARAMS))
    built = invoke("build", "--spec", str(tmp_path / "spec"), "--rope-scaling-factor", "32",
                   "--max-seq-len", "512", "--target", "torch", "--out", str(out))  # fmt: skip
    assert built.exit_code == 0, built.output
    package = import_package(out / "torch")
    tensors = meta_tensors(ISSUE_PARAMS, ISSUE_HF["intermediate_size"], seed=9, tied=False)
    write_meta_shards(tensors, tmp_path / "meta", 2, "llama3")
    (tmp_path / "meta" / "params.json").write_text(json.dumps(ISSUE_PARAMS))
    reference = LlamaForCausalLM(LlamaConfig(**ISSUE_HF)).eval()
    reference.load_state_dict(hf_state_dict(tensors, ISSUE_PARAMS))
    ids = np.random.default_rng(10).integers(0, 256, (1, 300))
    actual = torch_logits(package, tmp_path / "meta", ids)
    assert oracle.relative_error(actual, transformers_logits(reference, ids)) <= 1e-5
    stated = {**ISSUE_PARAMS, "rope_scaling_factor": 8.0}
    (tmp_path / "meta" / "params.json").write_text(json.dumps(stated))
    with pytest.raises(package.CheckpointError, match="rope_scaling_factor 8.0 .model has 32.0"):
        package.load_checkpoint(package.Model(), tmp_path / "meta")


# --- reproducer 3: a tied model whose file also holds the head ----------------------------------

TIED_HF = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 128, "tie_word_embeddings": True}  # fmt: skip
HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def tied_build(tmp_path_factory):
    """A tied transformers model, its save_pretrained folder (which drops the head), and every
    target built from that folder."""
    root = tmp_path_factory.mktemp("tied")
    reference = reference_model(TIED_HF, seed=3)
    reference.save_pretrained(root / "hf")
    built = invoke(
        "build", "--spec", str(root / "hf"), "--target", "all", "--out", str(root / "out")
    )
    assert built.exit_code == 0, built.output
    return reference, root


def with_head(reference: LlamaForCausalLM, folder: Path, head: torch.Tensor | None = None) -> Path:
    """`folder` holding config.json and a model.safetensors written with the safetensors library
    that stores the tied head as its own tensor (`head`, by default a copy of the embedding)."""
    folder.mkdir()
    reference.config.to_json_file(folder / "config.json")
    state = {name: t.detach().clone().contiguous() for name, t in reference.state_dict().items()}
    state[HEAD] = state[EMBEDDING].clone() if head is None else head
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def bind_onnx(spec: Path, weights: Path, out: Path):
    """The ONNX target built and bound (by reference) to `weights`: `bind`'s own code path."""
    return invoke("build", "--spec", str(spec), "--target", "onnx", "--weights", str(weights),
                  "--out", str(out))  # fmt: skip


def test_reproducer_3_a_stored_equal_head_loads_in_every_target(tied_build, tmp_path):
    """Before: torch, JAX and ONNX refused "unexpected: lm_head.weight" while convert accepted."""
    reference, root = tied_build
    folder = with_head(reference, tmp_path / "with-head")
    ids = np.random.default_rng(4).integers(0, 96, (2, 24))
    expected = transformers_logits(reference, ids)
    out = root / "out"
    assert (
        oracle.relative_error(torch_logits(import_package(out / "torch"), folder, ids), expected)
        <= 1e-5
    )
    jax_package = import_package(out / "jax")
    params = jax_package.load_checkpoint(folder)
    assert "lm_head" not in params
    logits = np.asarray(jax.jit(jax_package.forward)(params, ids))
    assert oracle.relative_error(logits, expected) <= 1e-5
    bound = bind_onnx(root / "hf", folder, tmp_path / "onnx")
    assert bound.exit_code == 0, bound.output
    onnx_logits = OnnxRunner(tmp_path / "onnx" / "onnx", folder).forward(ids)
    assert oracle.relative_error(onnx_logits, expected) <= 1e-5
    convert = import_file(out / "cerebras" / "convert.py")
    converted = convert.hf_to_cs(convert.load_hf(folder))  # as from the folder without the head
    assert converted.keys() == convert.hf_to_cs(convert.load_hf(root / "hf")).keys()
    converted = invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors"))
    assert converted.exit_code == 0, converted.output


def test_reproducer_3_a_stored_head_that_differs_is_refused_naming_both(tied_build, tmp_path):
    reference, root = tied_build
    embedding = reference.state_dict()[EMBEDDING]
    head = embedding.clone()
    head[5, 7] = torch.nextafter(head[5, 7], torch.tensor(1.0))  # one ulp: bitwise, not close
    folder = with_head(reference, tmp_path / "other-head", head.contiguous())
    out = root / "out"
    names = (HEAD, EMBEDDING)
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match="lm_head.weight differs from model.embed"):
        package.load_checkpoint(package.Model(), folder)
    jax_package = import_package(out / "jax")
    with pytest.raises(
        jax_package.CheckpointError, match="lm_head.weight differs from model.embed"
    ):
        jax_package.load_checkpoint(folder)
    convert = import_file(out / "cerebras" / "convert.py")
    with pytest.raises(convert.CheckpointError, match="lm_head.weight differs from model.embed"):
        convert.load_hf(folder)
    for result in (
        bind_onnx(root / "hf", folder, tmp_path / "o"),
        invoke("convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors")),
    ):
        message = one_line_refusal(result)
        assert all(name in message for name in names), message
    assert not (tmp_path / "o").exists() and not (tmp_path / "cs.safetensors").exists()


def test_reproducer_3_a_meta_tied_head_is_checked_the_same_way(tmp_path):
    """A Meta folder of a tied model may hold output.weight: equal loads, unequal is refused."""
    params = {**META_PARAMS, "vocab_size": 96}
    config = {**HF_OF_META, "tie_word_embeddings": True}
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    built = invoke("build", "--spec", str(tmp_path / "spec"), "--target", "torch",
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert built.exit_code == 0, built.output
    package = import_package(tmp_path / "out" / "torch")
    tensors = meta_tensors(params, config["intermediate_size"], seed=5, tied=True)
    reference = LlamaForCausalLM(LlamaConfig(**config)).eval()
    reference.load_state_dict(hf_state_dict(tensors, params), strict=False)
    tensors["output.weight"] = tensors["tok_embeddings.weight"].clone()
    write_meta_shards(tensors, tmp_path / "equal", 2, "llama3")
    ids = np.random.default_rng(6).integers(0, 96, (1, 30))
    actual = torch_logits(package, tmp_path / "equal", ids)
    assert oracle.relative_error(actual, transformers_logits(reference, ids)) <= 1e-5
    tensors["output.weight"] = tensors["output.weight"] * 1.5
    write_meta_shards(tensors, tmp_path / "unequal", 2, "llama3")
    with pytest.raises(package.CheckpointError, match="output.weight differs from tok_embeddings"):
        package.load_checkpoint(package.Model(), tmp_path / "unequal")


# --- reproducer 8: a config.json that omits optional keys ---------------------------------------


@pytest.mark.parametrize(
    "edit",
    [{"drop": "rms_norm_eps"}, {"set": {"num_key_value_heads": None}}],
    ids=["no rms_norm_eps", "num_key_value_heads null"],
)
def test_reproducer_8_onnx_bind_reads_omitted_keys_as_transformers_does(edit, tmp_path):
    """tests/test_config_reader.py holds torch, JAX and both converters to this; here the ONNX
    graphs, bound to the folder at build time, match transformers' reading of it."""
    config = {**HF_OF_META, "num_key_value_heads": 4}
    reference = reference_model(config, seed=7)
    folder = tmp_path / "hf"
    reference.save_pretrained(folder)
    written = json.loads((folder / "config.json").read_text())
    written.pop(edit.get("drop", ""), None)
    written |= edit.get("set", {})
    (folder / "config.json").write_text(json.dumps(written))
    reference = LlamaForCausalLM.from_pretrained(folder).eval()  # transformers' own reading
    out = tmp_path / "out"
    built = invoke("build", "--spec", str(folder), "--target", "onnx", "--weights", str(folder),
                   "--out", str(out))  # fmt: skip
    assert built.exit_code == 0, built.output
    ids = np.random.default_rng(8).integers(0, 96, (2, 20))
    logits = OnnxRunner(out / "onnx", folder).forward(ids)
    assert oracle.relative_error(logits, transformers_logits(reference, ids)) <= 1e-5
