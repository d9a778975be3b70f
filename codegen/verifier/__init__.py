"""The verifier shipped with the compiler: what `codegen verify` and the test suite both use.

- `oracle`: an independent float64 numpy LLaMA forward pass and the tolerances per dtype.
- `checkpoints`: random weights in the canonical (Hugging Face) layout, bfloat16 rounding,
  HF checkpoint folders.
- `emitted`: build a target into a folder; import emitted packages and scripts.
- `runners`: the one registry of per-target runners (`ADAPTERS`), importing each framework
  only when its target is used.

Nothing here imports torch, jax or onnxruntime at module load.
"""
