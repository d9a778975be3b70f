"""Generation as transformers does it: the token ids the spec reads from config.json and
generation_config.json, and the torch generate (left padding, per-row stop at EOS, sampling)
against transformers' own generate on the same weights."""

from __future__ import annotations

import json

import pytest
from transformers import GenerationConfig, LlamaConfig

from spec import get_preset, load_spec, to_hf_config


def test_token_ids_are_read_as_transformers_reads_them(tmp_path):
    """config.json's ids, overridden by generation_config.json's, equal what transformers'
    GenerationConfig.from_pretrained / LlamaConfig give; an int eos becomes a one-item list."""
    config = to_hf_config(get_preset("tiny")) | {"bos_token_id": 3, "eos_token_id": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_spec(tmp_path / "config.json")
    theirs = LlamaConfig.from_pretrained(tmp_path)
    assert (spec.bos_token_id, spec.eos_token_id) == (theirs.bos_token_id, (theirs.eos_token_id,))
    assert spec.pad_token_id is theirs.pad_token_id is None
    GenerationConfig(bos_token_id=5, eos_token_id=[6, 7], pad_token_id=8).save_pretrained(tmp_path)
    spec = load_spec(tmp_path)
    theirs = GenerationConfig.from_pretrained(tmp_path)
    assert spec.bos_token_id == theirs.bos_token_id == 5
    assert list(spec.eos_token_id) == theirs.eos_token_id == [6, 7]
    assert spec.pad_token_id == theirs.pad_token_id == 8


def test_config_without_token_ids_takes_llama_config_defaults(tmp_path):
    config = {k: v for k, v in to_hf_config(get_preset("tiny")).items() if "token" not in k}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec, theirs = load_spec(tmp_path / "config.json"), LlamaConfig(**config)
    assert (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id) == (
        theirs.bos_token_id, (theirs.eos_token_id,), theirs.pad_token_id,
    )  # fmt: skip


def test_token_ids_are_outside_the_fingerprint_and_bounded_by_the_vocabulary():
    spec = get_preset("tiny")
    other = spec.model_copy(update={"eos_token_id": (7, 9), "bos_token_id": 0, "pad_token_id": 5})
    assert other.fingerprint() == spec.fingerprint()
    with pytest.raises(ValueError, match="eos_token_id"):
        type(spec).model_validate(spec.model_dump() | {"eos_token_id": spec.vocab_size})


def test_presets_carry_their_families_token_ids():
    """LLaMA 1/2 SentencePiece <s> 1, </s> 2; Llama 3 base <|begin_of_text|> 128000,
    <|end_of_text|> 128001 (the models' config.json files)."""
    for name in ("7b", "65b", "llama2-7b", "llama2-70b"):
        assert (get_preset(name).bos_token_id, get_preset(name).eos_token_id) == (1, (2,))
    for name in ("llama3-8b", "llama3-70b", "llama3.1-8b"):
        assert (get_preset(name).bos_token_id, get_preset(name).eos_token_id) == (128000, (128001,))

