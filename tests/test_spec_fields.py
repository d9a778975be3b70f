"""The spec's fields: each documented, one name and one fingerprint per architecture, the
training recipe outside that fingerprint, and a dump that validates back to the same spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backends import BuildOptions
from codegen.build import render_target
from spec import PRESETS, ModelSpec, TrainingSpec, from_hf_config, from_meta_params, get_preset

TINY = {"name": "t", "vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4}


@pytest.mark.parametrize("model", [ModelSpec, TrainingSpec])
def test_every_field_is_documented(model):
    undocumented = [name for name, f in model.model_fields.items() if not f.description]
    assert not undocumented


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_dump_validates_back_to_the_same_spec(name):
    spec = get_preset(name)
    assert ModelSpec.model_validate(spec.model_dump()) == spec
    assert ModelSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_defaults_given_or_derived_are_one_spec_with_one_fingerprint():
    derived = get_preset("7b")
    # The same architecture with n_kv_heads and the FFN width written out (as an HF config has).
    fields = derived.model_dump(exclude_computed_fields=True)
    explicit = ModelSpec(**{**fields, "n_kv_heads": 32, "ffn_dim": 11008})
    assert explicit == derived and explicit.fingerprint() == derived.fingerprint()
    rule = ModelSpec(**TINY, multiple_of=16, ffn_dim_multiplier=None)
    assert ModelSpec(**TINY, ffn_dim=rule.ffn_dim, n_kv_heads=4).fingerprint() == rule.fingerprint()


def test_hf_and_meta_configs_of_one_model_have_one_fingerprint():
    # Llama 2 7B: HF's config.json states the FFN width, Meta's params.json the rule giving it.
    # Facts from meta-llama/Llama-2-7b-hf config.json and meta-llama/Llama-2-7b params.json.
    hf = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096}
    hf |= {"intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
    hf |= {"num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
    meta = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05}
    meta |= {"vocab_size": 32000, "max_seq_len": 4096}
    from_hf, from_meta = from_hf_config(hf, name="llama2"), from_meta_params(meta, name="llama2")
    assert from_hf.fingerprint() == from_meta.fingerprint()


def test_the_training_recipe_is_outside_the_fingerprint_and_the_headers():
    spec = get_preset("tiny")
    fields = spec.model_dump(exclude_computed_fields=True)
    retrained = ModelSpec(**{**fields, "training": {**fields["training"], "peak_lr": 0.5}})
    assert retrained != spec and retrained.fingerprint() == spec.fingerprint()
    before = render_target(spec, "onnx", BuildOptions())
    after = render_target(retrained, "onnx", BuildOptions())
    assert before["run.py"] == after["run.py"]
    # The architecture does change it.
    assert ModelSpec(**{**fields, "norm_eps": 1e-6}).fingerprint() != spec.fingerprint()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"ffn_dim": 100, "multiple_of": 16}, "contradicts Meta's rule"),
        ({"ffn_dim": 100, "ffn_dim_multiplier": 1.3}, "contradicts Meta's rule"),
        ({"multiple_of": 0}, "multiple_of: Input should be greater than 0"),
        ({"ffn_dim_multiplier": "x"}, "ffn_dim_multiplier: Input should be a valid number"),
        ({"kv_groups": 2}, "kv_groups (2) is derived"),  # head_dim is an input (issue 13)
    ],
)
def test_contradictions_are_refused(changes, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec(**TINY, **changes)


def test_a_bad_input_is_the_only_error_reported():
    # n_kv_heads and ffn_dim default from n_heads and dim; a bad n_heads or dim is one error.
    for key in ("n_heads", "dim"):
        with pytest.raises(ValidationError) as caught:
            ModelSpec(**{**TINY, key: "x"})
        assert [error["loc"] for error in caught.value.errors()] == [(key,)]
