"""One config reader: a config.json is read by transformers' rules (its defaults for omitted or
null keys, the 4.x and 5.x RoPE forms) in the compiler and in every emitted loader alike, so a
folder that builds always loads, to the logits transformers computes from the same folder."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from codegen.cli import main
from codegen.verifier import oracle
from codegen.verifier.checkpoints import random_weights
from codegen.verifier.emitted import import_file, import_package
from spec import ModelSpec, load_spec, to_hf_config
from spec.io import HF_DEFAULTS

SPEC = ModelSpec(
    name="omitted", vocab_size=300, dim=64, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=128
)


def test_defaults_are_transformers_defaults():
    """Every default the reader applies is the one `transformers.LlamaConfig()` applies."""
    config = LlamaConfig()
    for key, default in HF_DEFAULTS.items():
        if default is None:  # required by us: no default to compare
            continue
        if isinstance(default, dict):
            assert LlamaConfig(**{default["same_as"]: 8, key: None}).to_dict()[key] == 8
        elif key == "rope_theta":
            assert config.rope_parameters["rope_theta"] == default
        else:
            assert getattr(config, key) == default, key


def transformers_folder(folder, edit) -> LlamaForCausalLM:
    """save_pretrained of our random weights, then `edit` applied to its config.json; returns
    transformers' own model read back from that folder (its reading of the edited config)."""
    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(SPEC)))
    weights = {k: torch.from_numpy(v) for k, v in random_weights(SPEC, 0, std=0.1).items()}
    model.load_state_dict(weights)
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return LlamaForCausalLM.from_pretrained(folder).eval()


def drop(*keys):
    def edit(config):
        for key in keys:
            config.pop(key, None)

    return edit


EDITS = {
    "no rms_norm_eps": drop("rms_norm_eps"),
    "num_key_value_heads null": lambda config: config.update(num_key_value_heads=None),
    "no num_key_value_heads": drop("num_key_value_heads"),
    "4.x form, no rope_theta": lambda config: (
        drop("rope_parameters", "rope_theta")(config),
        config.update(rope_scaling=None),
    ),
    "5.x rope_parameters, no tie/max_position": lambda config: (
        drop("rope_theta", "rope_scaling", "tie_word_embeddings", "max_position_embeddings")(
            config
        ),
        config.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    ),
}


@pytest.mark.parametrize("case", EDITS)
def test_a_folder_that_builds_loads_to_transformers_logits(case, tmp_path):
    """Reproducer: a config.json without rms_norm_eps (or with num_key_value_heads null) built,
    but the emitted torch and JAX load_checkpoint refused the same folder."""
    folder = tmp_path / "omitted"
    reference = transformers_folder(folder, EDITS[case])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["build", "--spec", str(folder), "--target", "all", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ids = np.random.default_rng(1).integers(0, SPEC.vocab_size, (2, 24))
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()

    torch_package = import_package(out / "torch")
    model = torch_package.Model().eval()
    torch_package.load_checkpoint(model, folder)
    with torch.no_grad():
        actual = model(torch.from_numpy(ids)).numpy()
    assert oracle.relative_error(actual, expected) <= 1e-5

    jax_package = import_package(out / "jax")
    params = jax_package.load_checkpoint(folder)
    logits = np.asarray(jax.jit(jax_package.forward)(params, ids))
    assert oracle.relative_error(logits, expected) <= 1e-5

    convert = import_file(out / "cerebras" / "convert.py")
    assert len(convert.load_hf(folder)) == len(reference.state_dict())
    converted = CliRunner().invoke(
        main, ["convert", "--to", "cerebras", str(folder), str(tmp_path / "cs.safetensors")]
    )  # the compiler's own check of the config.json beside the weights
    assert converted.exit_code == 0, converted.output


@pytest.mark.parametrize(
    ("key", "value"),
    [("rms_norm_eps", 1e-5), ("num_key_value_heads", 2), ("rope_theta", 500000.0)],
)
def test_a_config_of_another_model_is_still_refused(key, value, tmp_path):
    """Defaults fill omitted keys only: a key that is given and differs is refused by the
    compiler's reader and the emitted one alike, naming the key."""
    folder = tmp_path / "other"
    transformers_folder(folder, drop("rms_norm_eps"))
    out = tmp_path / "out"
    built = CliRunner().invoke(
        main, ["build", "--spec", str(folder), "--target", "torch", "--out", str(out)]
    )
    assert built.exit_code == 0, built.output
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters", None)
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    package = import_package(out / "torch")
    with pytest.raises(package.CheckpointError, match=key):
        package.load_checkpoint(package.Model(), folder)


def test_rope_scaling_beside_rope_parameters_is_read_as_transformers_reads_it(tmp_path):
    """A 5.x config.json (rope_parameters: default) with a 4.x `rope_scaling` added: transformers
    applies the rope_scaling; the compiler and the loaders must read the same scaling."""
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    folder = tmp_path / "ck"
    theirs = transformers_folder(folder, lambda config: config.update(rope_scaling=llama3))
    assert json.loads((folder / "config.json").read_text())["rope_parameters"] is not None
    expected = {k: v for k, v in theirs.config.rope_parameters.items() if k != "rope_theta"}
    expected["type"] = expected.pop("rope_type")
    ours = load_spec(folder / "config.json").rope_scaling
    assert ours is not None and ours.model_dump() == expected
