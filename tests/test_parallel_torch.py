"""Scale-out, torch half: the emitted parallel.py against one process, with real gloo collectives.

2 and 4 local CPU processes (torch.multiprocessing spawn) run tensor parallel, sequence parallel,
FSDP2, HSDP and FSDP x TP; each must give the logits, gradients and SGD update of one process.
Plus the parallel spec itself: logical axes, rules, and one clear error for bad specs.
"""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from backends import BuildOptions
from codegen.build import render_target
from codegen.cli import main
from codegen.verifier.checkpoints import random_weights, save_hf_checkpoint
from codegen.verifier.emitted import build_target
from spec import ModelSpec, ParallelSpec, get_preset, load_parallel_spec, logical_axes
from spec.parallel import LogicalAxis

# Tied GQA (4 heads, 2 kv heads) and untied MHA; vocabularies that split over 2.
GQA = ModelSpec.model_validate(get_preset("tiny-gqa").model_dump(exclude_computed_fields=True)
                               | {"name": "tiny-gqa-tp", "vocab_size": 512})  # fmt: skip
MHA = ModelSpec.model_validate(get_preset("tiny").model_dump(exclude_computed_fields=True)
                               | {"name": "tiny-tp", "vocab_size": 516})  # fmt: skip
# An untied build that splits attention and FFN but replicates the vocabulary.
MHA_VOCAB_WHOLE = ParallelSpec(rules={"vocab": None})

BATCH, SEQ = 4, 16
# name -> (package, data, fsdp, tensor, sequence_parallel)
TWO_PROCESSES = {
    "tp2": ("gqa", 1, 1, 2, False),
    "tp2-sequence-parallel": ("gqa", 1, 1, 2, True),
    "tp2-vocab-whole": ("mha_vocab_whole", 1, 1, 2, False),
    "fsdp2": ("gqa", 1, 2, 1, False),
    "hsdp2": ("mha", 2, 1, 1, False),
}
FOUR_PROCESSES = {
    "fsdp2xtp2": ("gqa", 1, 2, 2, False),
    "fsdp2xtp2-sequence-parallel": ("mha", 1, 2, 2, True),
}


def relative_error(actual, expected) -> float:
    return float((actual - expected).norm() / expected.norm())


def worker(rank: int, world: int, port: int, folders: dict, configs: dict, out: str) -> None:
    """One rank: every config against a one-process reference; errors written by rank 0."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from codegen.verifier.emitted import import_package

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    packages = {key: import_package(Path(folder)) for key, folder in folders.items()}
    parallel = {
        key: importlib.import_module(p.__name__ + ".parallel") for key, p in packages.items()
    }

    def loaded(key):
        model = packages[key].Model()
        packages[key].load_checkpoint(model, Path(folders[key]).parent / "checkpoint")
        return model

    def train_step(model, ids):
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return logits.detach()

    def full(tensor):
        return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

    results = {}
    for name, (key, data, fsdp, tensor, sequence_parallel) in configs.items():
        package = packages[key]
        vocab = package.ModelArgs().vocab_size
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
        reference = loaded(key)
        expected = train_step(reference, ids)
        torch.optim.SGD(reference.parameters(), lr=0.5).step()

        mesh = parallel[key].make_mesh("cpu", data=data, fsdp=fsdp, tensor=tensor)
        model = loaded(key)
        if tensor > 1:
            switches = {"sequence_parallel": True} if sequence_parallel else {}
            parallel[key].apply_tensor_parallel(model, mesh["tensor"], **switches)
        if data * fsdp > 1:
            parallel[key].apply_fsdp(model, mesh["data", "fsdp"])
        d, f, _ = mesh.get_coordinate()
        rows = BATCH // (data * fsdp)
        mine = slice((d * fsdp + f) * rows, (d * fsdp + f + 1) * rows)
        logits = train_step(model, ids[mine])
        # FSDP averages gradients over data x fsdp: the same as the full batch's mean loss.
        errors = {"logits": relative_error(logits, expected[mine])}
        reference_params = dict(reference.named_parameters())
        for pname, param in model.named_parameters():
            errors[f"grad {pname}"] = relative_error(full(param.grad), reference_params[pname].grad)
        torch.optim.SGD(model.parameters(), lr=0.5).step()
        for pname, param in model.named_parameters():
            errors[f"updated {pname}"] = relative_error(full(param.detach()),
                                                        reference_params[pname].detach())  # fmt: skip
        if data * fsdp == 1 and not sequence_parallel:
            # KV-cache decoding with local head counts: the same greedy tokens as one process.
            prompt = ids[:1, :5]
            tokens = model.generate(prompt, max_new_tokens=6)
            errors["generate"] = float(not torch.equal(tokens, reference.generate(prompt, 6)))
        gathered = [None] * world
        dist.all_gather_object(gathered, errors)
        results[name] = {k: max(g[k] for g in gathered) for k in errors}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("parallel")
    builds = {
        "gqa": (GQA, BuildOptions()),
        "mha": (MHA, BuildOptions()),
        "mha_vocab_whole": (MHA, BuildOptions(parallel=MHA_VOCAB_WHOLE)),
    }
    paths = {}
    for key, (spec, options) in builds.items():
        paths[key] = str(build_target(spec, "torch", root / key, options))
        save_hf_checkpoint(spec, random_weights(spec, seed=5, std=0.2), root / key / "checkpoint")
    return paths


def run_ranks(world: int, folders: dict, configs: dict, tmp_path: Path) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "results.json"
    mp.spawn(worker, args=(world, port, folders, configs, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize(("world", "configs"), [(2, TWO_PROCESSES), (4, FOUR_PROCESSES)],
                         ids=["2-processes", "4-processes"])  # fmt: skip
def test_parallel_matches_one_process(world, configs, folders, tmp_path):
    results = run_ranks(world, folders, configs, tmp_path)
    assert set(results) == set(configs)
    for name, errors in results.items():
        n_params = sum(key.startswith("grad ") for key in errors)
        assert n_params >= 9 * 2 + 2, (name, sorted(errors))  # every parameter was compared
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 1e-5, f"{name}: {worst} relative error {errors[worst]:.2e}"


# ---- the spec: logical axes, rules, validation -------------------------------------------


def test_every_weight_has_logical_axes_of_its_rank():
    from codegen.verifier.checkpoints import weight_shapes

    for spec in (GQA, MHA):
        axes = logical_axes(spec)
        shapes = weight_shapes(spec)
        assert axes.keys() == shapes.keys()
        assert all(len(axes[name]) == len(shape) for name, shape in shapes.items())
    stacked = logical_axes(MHA, split_heads=True, stacked=True)
    assert stacked["self_attn.k_proj.weight"] == ("layers", "kv_heads", "head_dim", "embed")
    assert stacked["lm_head.weight"] == ("vocab", "embed")


def test_default_rules_are_megatron_and_fsdp():
    spec = ParallelSpec()
    partition = spec.partition(logical_axes(MHA)["model.layers.0.mlp.down_proj.weight"])
    assert partition == (("fsdp",), ("tensor",))
    assert spec.partition((LogicalAxis.batch, LogicalAxis.head_dim)) == (("data", "fsdp"), None)


@pytest.mark.parametrize(
    ("mesh", "batch", "expected"),
    [
        ({"tensor": 4}, None, "mesh.tensor: kv_heads (2) is not divisible by the tensor degree (4)"),
        ({"tensor": 8}, None, "heads (4) is not divisible by the tensor degree (8)"),
        ({"tensor": 3}, None, "mlp (176) is not divisible by the tensor degree (3)"),
        ({"tensor": 3}, None, "vocab (512) is not divisible by the tensor degree (3)"),
        ({"data": 3, "fsdp": 1}, 8, "mesh.data*fsdp: batch (8) is not divisible by the data"),
        ({"data": 3}, 8, "batch (8) is not divisible by the data x fsdp degree (3)"),
    ],
)  # fmt: skip
def test_indivisible_sizes_name_the_numbers(mesh, batch, expected):
    with pytest.raises(ValidationError) as caught:
        ParallelSpec(mesh=mesh).validate_for(GQA, batch_size=batch)
    located = [f"{'.'.join(e['loc'])}: {e['msg']}" for e in caught.value.errors()]
    assert any(expected in line for line in located), located


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"rules": {"embed": "tensor"}}, "rules.embed: the tensor axis splits only"),
        ({"rules": {"kv_heads": None}}, "rules.heads ['tensor'] and rules.kv_heads [] must match"),
        ({"rules": {"vocab": "fsdp"}}, "model.embed_tokens.weight ['vocab', 'embed'] on the same"),
        ({"rules": {"embed": "data"}}, "rules.embed: the data axis replicates weights"),
        ({"rules": {"mlp": ["tensor", "tensor"]}}, "a mesh axis appears twice"),
        ({"rules": {"mlp": "pipeline"}}, "Input should be 'data', 'fsdp' or 'tensor'"),
        ({"rules": {"vocab": None, "heads": None, "kv_heads": None, "mlp": None}},
         "the tensor axis splits nothing"),
        ({"rules": {"vocab": None}, "sequence_parallel": True}, "sequence_parallel needs rules vocab"),
        ({"mesh": {"fsdp": 0}}, "fsdp must be positive, or -1"),
        ({"mesh": {"pipeline": 2}}, "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_rules_are_one_clear_error(data, expected):
    with pytest.raises(ValidationError) as caught:
        ParallelSpec.model_validate(data)
    assert caught.value.error_count() == 1
    assert expected in str(caught.value)


def test_cli_parallel_file_sets_the_emitted_defaults(tmp_path):
    parallel = {"mesh": {"fsdp": 2, "tensor": 2}, "sequence_parallel": True,
                "param_dtype": "bfloat16", "reduce_dtype": "float32"}  # fmt: skip
    (tmp_path / "parallel.yaml").write_text(yaml.safe_dump(parallel))
    model = MHA.model_dump(mode="json", exclude_computed_fields=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    result = CliRunner().invoke(main, ["build", "--spec", str(tmp_path / "model.yaml"), "--target",
                                       "torch", "--out", str(tmp_path / "o"),
                                       "--parallel", str(tmp_path / "parallel.yaml")])  # fmt: skip
    assert result.exit_code == 0, result.output
    emitted = (tmp_path / "o" / "torch" / "parallel.py").read_text()
    for line in ("DATA = 1\n", "FSDP = 2\n", "TENSOR = 2\n", "SEQUENCE_PARALLEL = True\n",
                 "param_dtype=torch.bfloat16, reduce_dtype=torch.float32"):  # fmt: skip
        assert line in emitted, line
    manifest = json.loads((tmp_path / "o" / "torch" / "manifest.json").read_text())
    assert manifest["options"]["parallel"]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert load_parallel_spec(tmp_path / "parallel.yaml").sequence_parallel


def test_default_build_emits_the_default_spec():
    files = render_target(get_preset("7b"), "torch", BuildOptions())
    emitted = files["parallel.py"].decode()
    assert "FSDP = -1\n" in emitted and "TENSOR = 1\n" in emitted
    assert "parallel" not in json.loads(files["manifest.json"])["options"]
