"""The emitted PyTorch package against transformers (external oracle), Meta checkpoints, and
its own contracts: parameter counts on the meta device, loading errors, standalone imports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from backends import BuildOptions
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target, import_package
from spec import PRESETS, DType, ModelSpec, get_preset, to_hf_config

EXTERNAL_CASES = {
    "mha": get_preset("tiny"),
    "gqa-tied": get_preset("tiny-gqa"),
    "mqa-llama3-rope": get_preset("tiny-llama3"),
    "linear-rope": ModelSpec(
        name="tiny-linear",
        vocab_size=300,
        dim=64,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        ffn_dim=96,
        max_seq_len=128,
        rope_scaling={"type": "linear", "factor": 4.0},
    ),
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """One emitted float32 torch package per spec, built once."""
    root = tmp_path_factory.mktemp("torch")
    return {
        name: import_package(build_target(spec, "torch", root / name))
        for name, spec in EXTERNAL_CASES.items()
    }


def transformers_checkpoint(spec: ModelSpec, folder, seed: int = 0) -> LlamaForCausalLM:
    """A transformers model holding our random weights, saved with save_pretrained."""
    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(spec))).eval()
    weights = {k: torch.from_numpy(v) for k, v in random_weights(spec, seed, std=0.1).items()}
    model.load_state_dict(weights, strict=not spec.tie_embeddings)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("case", EXTERNAL_CASES)
def test_logits_and_greedy_tokens_match_transformers(case, packages, tmp_path):
    spec, package = EXTERNAL_CASES[case], packages[case]
    reference = transformers_checkpoint(spec, tmp_path / "hf")
    model = package.Model().eval()
    package.load_checkpoint(model, tmp_path / "hf")
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, spec.vocab_size, (2, 48)))
    with torch.no_grad():
        expected, actual = reference(ids).logits, model(ids)
    assert oracle.relative_error(actual.numpy(), expected.numpy()) <= 1e-5
    prompt = ids[:1, :16]
    ours = model.generate(prompt, max_new_tokens=32, temperature=0.0, eos_token_id=None)
    theirs = reference.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
        min_new_tokens=32, pad_token_id=0,
    )  # fmt: skip
    assert ours.shape == (1, 48)
    assert torch.equal(ours, theirs)


def test_sharded_checkpoint_with_index(packages, tmp_path):
    spec, package = EXTERNAL_CASES["mha"], packages["mha"]
    reference = transformers_checkpoint(spec, tmp_path / "hf")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = package.Model().eval()
    package.load_checkpoint(model, tmp_path / "sharded")
    ids = torch.arange(20)[None] % spec.vocab_size
    with torch.no_grad():
        assert oracle.relative_error(model(ids).numpy(), reference(ids).logits.numpy()) <= 1e-5


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of DESIGN.md's interleaved -> half row permutation (what Meta checkpoints hold)."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def write_meta_checkpoint(spec: ModelSpec, weights: dict, folder, shards: int) -> None:
    """consolidated.NN.pth split the way Meta's model-parallel checkpoints are, + params.json."""
    rename = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
              "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
              "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
              "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
              "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    row_split = {"wq", "wk", "wv", "w1", "w3", "output"}
    column_split = {"wo", "w2", "tok_embeddings"}
    parts = [{} for _ in range(shards)]
    for name, value in weights.items():
        meta = name.replace("model.embed_tokens", "tok_embeddings").replace("model.norm", "norm")
        meta = meta.replace("lm_head", "output").replace("model.layers", "layers")
        for hf, m in rename.items():
            meta = meta.replace(hf, m)
        if "wq" in meta:
            value = half_to_interleaved(value, spec.n_heads)
        elif "wk" in meta:
            value = half_to_interleaved(value, spec.n_kv_heads)
        kind = meta.split(".")[-2]
        axis = 0 if kind in row_split else 1 if kind in column_split else None
        pieces = np.array_split(value, shards, axis=axis) if axis is not None else [value] * shards
        for part, piece in zip(parts, pieces):
            part[meta] = torch.from_numpy(np.ascontiguousarray(piece))
    folder.mkdir()
    for i, part in enumerate(parts):
        torch.save(part, folder / f"consolidated.{i:02d}.pth")
    params = {"dim": spec.dim, "n_layers": spec.n_layers, "n_heads": spec.n_heads,
              "n_kv_heads": spec.n_kv_heads, "vocab_size": spec.vocab_size,
              "norm_eps": spec.norm_eps, "rope_theta": spec.rope_theta}  # fmt: skip
    (folder / "params.json").write_text(json.dumps(params))


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_checkpoint_loads_to_the_same_logits(packages, tmp_path, shards):
    spec, package = EXTERNAL_CASES["mha"], packages["mha"]
    weights = random_weights(spec, seed=3, std=0.1)
    write_meta_checkpoint(spec, weights, tmp_path / "meta", shards)
    model = package.Model().eval()
    package.load_checkpoint(model, tmp_path / "meta")
    ids = np.random.default_rng(2).integers(0, spec.vocab_size, (1, 40))  # long positions
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).numpy()
    assert oracle.relative_error(logits, oracle.forward(spec, weights, ids)) <= 1e-5


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_on_meta_device(name, tmp_path):
    spec = PRESETS[name]
    package = import_package(build_target(spec, "torch", tmp_path))
    with torch.device("meta"):
        model = package.Model()
    assert sum(p.numel() for p in model.parameters()) == spec.param_count


def test_bfloat16_build_holds_bfloat16_parameters_and_returns_float32(tmp_path):
    spec = get_preset("tiny")
    package = import_package(build_target(spec, "torch", tmp_path, BuildOptions(DType.bfloat16)))
    model = package.Model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32
    assert model(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.float32


def test_checkpoint_errors_name_every_offending_tensor(packages, tmp_path):
    spec, package = EXTERNAL_CASES["mha"], packages["mha"]
    weights = random_weights(spec, seed=0)
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.layers.0.self_attn.q_proj.weight"] = weights[
        "model.layers.0.self_attn.q_proj.weight"
    ][:, :32]
    weights["extra.weight"] = np.ones(3, np.float32)
    save_hf_checkpoint(spec, weights, tmp_path / "bad")
    model = package.Model()
    with pytest.raises(package.CheckpointError) as caught:
        package.load_checkpoint(model, tmp_path / "bad")
    message = str(caught.value)
    assert "missing: model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected: extra.weight" in message
    assert "model.layers.0.self_attn.q_proj.weight (64, 32)" in message


def test_config_of_another_model_is_refused(packages, tmp_path):
    spec, package = EXTERNAL_CASES["mha"], packages["mha"]
    save_hf_checkpoint(spec, random_weights(spec, seed=0), tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["rope_theta"] = 500000.0
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(package.CheckpointError, match="rope_theta 500000.0"):
        package.load_checkpoint(package.Model(), tmp_path / "ck")


def test_emitted_package_is_standalone(tmp_path):
    """It imports only torch, safetensors and the standard library, never this compiler."""
    folder = build_target(get_preset("tiny-gqa"), "torch", tmp_path / "out")
    (tmp_path / "llama_tiny").symlink_to(folder, target_is_directory=True)
    script = (
        f"import sys, torch\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "from llama_tiny import Model\n"
        "out = Model().generate(torch.zeros(1, 4, dtype=torch.long), 3, eos_token_id=None)\n"
        "assert out.shape == (1, 7)\n"
        "names = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)\n"
        "assert not {'codegen', 'spec', 'backends', 'jinja2', 'pydantic'} & names, names\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, check=True)


@pytest.mark.parametrize("batch", [2, 1])
def test_no_graph_breaks_under_torch_compile(packages, batch):
    """Forward and a KV-cache decode step each trace into one graph (torch._dynamo.explain);
    batch 1 takes Linear's torch.mv path."""
    model = packages["gqa-tied"].Model().eval()
    ids = torch.randint(0, model.args.vocab_size, (batch, 16))
    forward = torch._dynamo.explain(model)(ids)
    assert (forward.graph_break_count, forward.graph_count) == (0, 1), forward.break_reasons
    model.setup_cache(batch, 32)
    model(ids)
    for start_pos in (16, torch.tensor(16)):  # generate's static step takes the tensor
        decode = torch._dynamo.explain(model)(ids[:, :1], start_pos=start_pos)
        assert (decode.graph_break_count, decode.graph_count) == (0, 1), decode.break_reasons
    model.clear_cache()


def test_decode_step_compiles_on_cuda_with_reduce_overhead_and_coordinate_descent_options(
    packages,
):
    """compiled_forward's torch.compile arguments, read without a GPU: on CUDA, options equal to
    what mode="reduce-overhead" sets (torch._inductor.list_mode_options, torch's own table) plus
    the Inductor setting that TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 turns on (read from
    torch in a fresh process with that variable); on CPU none, as before. torch.compile accepts
    them: it checks each option's name and type when called, before any compilation."""
    from torch._inductor import list_mode_options

    module = packages["mha"].model
    flag = subprocess.run(
        [sys.executable, "-c", "import torch._inductor.config as c; print(c.coordinate_descent_tuning)"],
        env={"PATH": "", "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert flag.strip() == "True"
    expected = list_mode_options("reduce-overhead") | {"coordinate_descent_tuning": True}
    for device in (torch.device("cuda"), torch.device("cuda", 1)):
        assert module.compile_options(device) == {"options": expected}
    assert module.compile_options(torch.device("cpu")) == {}
    torch.compile(lambda x: x + 1, fullgraph=True, **module.compile_options(torch.device("cuda")))


def test_compiled_generate_matches_eager_and_compiles_once(packages):
    """generate(compile=True) gives eager's greedy tokens, and one graph serves every decode
    position and a second call (start_pos is symbolic, the cache static)."""
    from torch._dynamo.utils import counters

    model = packages["mha"].Model().eval()
    prompt = torch.randint(
        0, model.args.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0)
    )
    eager = model.generate(prompt, max_new_tokens=8)
    graphs_before = counters["stats"]["unique_graphs"]
    first = model.generate(prompt, max_new_tokens=8, compile=True)
    second = model.generate(prompt, max_new_tokens=8, compile=True)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    model.setup_cache(1, 16)
    with torch.inference_mode():
        model(prompt)
        step = prompt[:, -1:]
        torch.testing.assert_close(
            model.compiled_forward(step, start_pos=5),
            model(step, start_pos=5),
            rtol=1e-5,
            atol=1e-5,
        )
    model.clear_cache()
