"""The llama-codegen architecture spec (pydantic v2, no framework imports)."""

from .io import SpecFormatError, from_hf_config, from_meta_params, load_spec, to_hf_config
from .model import (
    DType,
    LinearRopeScaling,
    Llama3RopeScaling,
    ModelSpec,
    TrainingSpec,
    meta_ffn_hidden_dim,
)
from .presets import PRESETS, UnknownPresetError, get_preset

__all__ = [
    "PRESETS",
    "DType",
    "LinearRopeScaling",
    "Llama3RopeScaling",
    "ModelSpec",
    "SpecFormatError",
    "TrainingSpec",
    "UnknownPresetError",
    "from_hf_config",
    "from_meta_params",
    "get_preset",
    "load_spec",
    "meta_ffn_hidden_dim",
    "to_hf_config",
]
