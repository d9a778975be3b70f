"""The spec: preset facts from DESIGN.md section 2, derived numbers, validation, config import."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from spec import (
    PRESETS,
    ModelSpec,
    SpecFormatError,
    from_hf_config,
    from_meta_params,
    get_preset,
    load_spec,
    meta_ffn_hidden_dim,
    to_hf_config,
)

# preset: dim, layers, heads, kv, ffn, vocab, ctx, eps, theta, exact parameters (DESIGN.md §2)
TABLE = {
    "7b": (4096, 32, 32, 32, 11008, 32000, 2048, 1e-6, 1e4, 6_738_415_616),
    "13b": (5120, 40, 40, 40, 13824, 32000, 2048, 1e-6, 1e4, 13_015_864_320),
    "33b": (6656, 60, 52, 52, 17920, 32000, 2048, 1e-6, 1e4, 32_528_943_616),
    "65b": (8192, 80, 64, 64, 22016, 32000, 2048, 1e-5, 1e4, 65_285_660_672),
    "llama2-70b": (8192, 80, 64, 8, 28672, 32000, 4096, 1e-5, 1e4, 68_976_648_192),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256, 8192, 1e-5, 5e5, 8_030_261_248),
}


@pytest.mark.parametrize("name", TABLE)
def test_preset_matches_design_table(name):
    s = get_preset(name)
    actual = (
        s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.ffn_dim, s.vocab_size,
        s.max_seq_len, s.norm_eps, s.rope_theta, s.param_count,
    )  # fmt: skip
    assert actual == TABLE[name]


def test_paper_sizes_are_truncated_totals():
    paper = {"7b": "6.7", "13b": "13.0", "33b": "32.5", "65b": "65.2"}
    for name, size in paper.items():
        billions = PRESETS[name].param_count / 1e9
        assert f"{int(billions * 10) / 10:.1f}" == size


def test_paper_training_recipe():
    for name, lr, tokens in [("7b", 3e-4, 10**12), ("13b", 3e-4, 10**12),
                             ("33b", 1.5e-4, 14 * 10**11), ("65b", 1.5e-4, 14 * 10**11)]:  # fmt: skip
        t = PRESETS[name].training
        assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip, t.warmup_steps) == (
            0.9, 0.95, 0.1, 1.0, 2000,
        )  # fmt: skip
        assert (t.peak_lr, t.total_tokens, t.min_lr_ratio, t.seq_len) == (lr, tokens, 0.1, 2048)
        assert t.batch_tokens == 4 * 2**20 and t.batch_size == 2048


def test_llama31_rope_scaling_constants_live_in_the_spec():
    scaling = PRESETS["llama3.1-8b"].rope_scaling
    assert scaling is not None and scaling.type == "llama3"
    assert (scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor) == (8.0, 1.0, 4.0)
    assert scaling.original_max_position_embeddings == 8192


def test_required_presets_exist():
    required = {"7b", "13b", "33b", "65b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b",
                "llama3-70b", "llama3.1-8b", "tiny"}  # fmt: skip
    assert required <= set(PRESETS)


def test_meta_ffn_rule():
    assert meta_ffn_hidden_dim(4096, 256, None) == 11008
    assert meta_ffn_hidden_dim(8192, 4096, 1.3) == 28672
    assert meta_ffn_hidden_dim(4096, 1024, 1.3) == 14336


def test_flops_and_memory():
    s = PRESETS["7b"]
    assert s.flops_per_token_forward == 2 * s.param_count + 2 * 32 * 2048 * 4096
    assert s.flops_per_token_train == 3 * s.flops_per_token_forward
    assert s.weight_bytes_bf16 * 2 == s.weight_bytes_fp32 == 4 * s.param_count
    assert s.train_bytes_adamw == 16 * s.param_count


BASE = {"name": "t", "vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"n_heads": 5}, "n_heads", "divisible"),
        ({"dim": 66, "n_heads": 22}, "head_dim", "even"),
        ({"n_kv_heads": 3}, "n_kv_heads", "divide"),
        ({"dim": -64}, "dim", "greater than 0"),
        ({"n_layers": 0}, "n_layers", "greater than 0"),
        ({"vocab_size": 0}, "vocab_size", "greater than 0"),
        ({"bogus": 1}, "bogus", "Extra inputs"),
        ({"ffn_dim": 100, "multiple_of": 16}, "ffn_dim", "Meta's rule"),
        ({"norm_eps": float("nan")}, "norm_eps", "finite"),
        ({"name": "x; import os"}, "name", "pattern"),
        (
            {
                "rope_scaling": {
                    "type": "llama3",
                    "factor": 8,
                    "low_freq_factor": 4,
                    "high_freq_factor": 1,
                    "original_max_position_embeddings": 64,
                }
            },
            "high_freq_factor",
            "exceed",
        ),
    ],
)
def test_invalid_spec_names_the_field(changes, field, words):
    with pytest.raises(ValidationError) as caught:
        ModelSpec(**{**BASE, **changes})
    message = str(caught.value)
    assert field in message and words in message


def test_consistent_explicit_ffn_is_accepted():
    spec = ModelSpec(**BASE, ffn_dim=176, multiple_of=16)
    assert spec.ffn_dim == 176


def test_spec_is_frozen():
    with pytest.raises(ValidationError):
        PRESETS["7b"].dim = 1  # type: ignore[misc]


HF_4X = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "torch_dtype": "bfloat16", "hidden_act": "silu",
}  # fmt: skip


def _same_model(a: ModelSpec, b: ModelSpec) -> bool:
    keys = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "norm_eps",
            "rope_theta", "rope_scaling", "max_seq_len", "tie_embeddings")  # fmt: skip
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def test_hf_4x_config_import():
    assert _same_model(from_hf_config(HF_4X), PRESETS["llama3.1-8b"])


def test_hf_5x_rope_parameters_import():
    config = {k: v for k, v in HF_4X.items() if k not in ("rope_theta", "rope_scaling")}
    config["rope_parameters"] = {**HF_4X["rope_scaling"], "rope_theta": 500000.0}
    assert _same_model(from_hf_config(config), PRESETS["llama3.1-8b"])


def test_hf_export_round_trips():
    for name, spec in PRESETS.items():
        assert _same_model(from_hf_config(to_hf_config(spec), name=name), spec), name


def test_meta_params_import():
    llama1 = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06,
              "vocab_size": -1}  # fmt: skip
    # params.json states no context length (LLaMA 1's is 2048): it is given, never assumed
    assert _same_model(from_meta_params(llama1, max_seq_len=2048), PRESETS["7b"])
    llama3 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
              "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05,
              "rope_theta": 500000.0, "use_scaled_rope": True, "max_seq_len": 131072}  # fmt: skip
    # nor the RoPE scaling factor of use_scaled_rope (Llama 3.1's is 8)
    assert _same_model(from_meta_params(llama3, rope_scaling_factor=8), PRESETS["llama3.1-8b"])


def test_load_spec_detects_format(tmp_path):
    hf = tmp_path / "Llama-3.1-8B" / "config.json"
    hf.parent.mkdir()
    hf.write_text(json.dumps(HF_4X))
    spec = load_spec(hf)
    assert spec.name == "Llama-3.1-8B" and _same_model(spec, PRESETS["llama3.1-8b"])
    ours = tmp_path / "mine.yaml"
    ours.write_text("name: mine\nvocab_size: 100\ndim: 64\nn_layers: 2\nn_heads: 4\n")
    assert load_spec(ours).param_count == ModelSpec(**{**BASE, "name": "mine"}).param_count


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[1, 2]", "expected a mapping"),
        ("{model_type: mistral, hidden_size: 8}", "not a LLaMA config"),
        ("{model_type: llama, hidden_size: 64}", "required key"),
        ("a: [unclosed", "not valid"),
    ],
)
def test_unreadable_spec_files_are_refused(tmp_path, content, words):
    path = tmp_path / "spec.yaml"
    path.write_text(content)
    with pytest.raises(SpecFormatError, match=words):
        load_spec(path)
