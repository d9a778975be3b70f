"""The llama-codegen architecture spec (pydantic v2, no framework imports)."""

from .io import (
    SpecFormatError,
    from_hf_config,
    from_meta_params,
    load_spec,
    to_hf_config,
    to_spec_yaml,
)
from .model import (
    DType,
    DynamicRopeScaling,
    LinearRopeScaling,
    Llama3RopeScaling,
    LongRopeScaling,
    ModelSpec,
    TrainingSpec,
    YarnRopeScaling,
    meta_ffn_hidden_dim,
)
from .parallel import ParallelSpec, load_parallel_spec, logical_axes
from .presets import PRESETS, UnknownPresetError, get_preset

__all__ = [
    "PRESETS",
    "DType",
    "DynamicRopeScaling",
    "LinearRopeScaling",
    "Llama3RopeScaling",
    "LongRopeScaling",
    "ModelSpec",
    "ParallelSpec",
    "SpecFormatError",
    "TrainingSpec",
    "UnknownPresetError",
    "YarnRopeScaling",
    "from_hf_config",
    "from_meta_params",
    "get_preset",
    "load_parallel_spec",
    "load_spec",
    "logical_axes",
    "meta_ffn_hidden_dim",
    "to_hf_config",
    "to_spec_yaml",
]
