"""llama-codegen: compiles one LLaMA architecture spec into PyTorch, JAX, ONNX and Cerebras code."""

__version__ = "0.1.0"
