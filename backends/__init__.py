"""Targets the compiler can emit. Adding one means one folder here and one line below."""

from __future__ import annotations

import importlib

from .base import Artifact, Backend, BuildOptions, Raw, Rendered

TARGETS: dict[str, str] = {
    "torch": "backends.torch",
    "jax": "backends.jax",
    "onnx": "backends.onnx",
    "cerebras": "backends.cerebras",
}


def get_backend(name: str) -> Backend:
    """The backend object of a target, importing only that target's module."""
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name]).BACKEND


__all__ = ["TARGETS", "Artifact", "Backend", "BuildOptions", "Raw", "Rendered", "get_backend"]
