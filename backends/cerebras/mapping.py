"""Hugging Face <-> Cerebras Model Zoo checkpoint names: the one table both directions use.

The emitted convert.py prints this table, and `python -m codegen convert` reads it, so the two
cannot drift apart. Names follow the Model Zoo's own LLaMA converter (GPT2LMHeadModel configured
as LLaMA): `{i}` stands for the layer index.
"""

from __future__ import annotations

from dataclasses import dataclass

from spec import ModelSpec

# (Hugging Face name, Cerebras name), per layer and then the rest.
LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("model.layers.{i}.self_attn.q_proj.weight", "transformer_decoder.layers.{i}.self_attn.proj_q_dense_layer.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "transformer_decoder.layers.{i}.self_attn.proj_k_dense_layer.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "transformer_decoder.layers.{i}.self_attn.proj_v_dense_layer.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "transformer_decoder.layers.{i}.self_attn.proj_output_dense_layer.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer_for_glu.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "transformer_decoder.layers.{i}.ffn.ffn.1.linear_layer.weight"),
    ("model.layers.{i}.input_layernorm.weight", "transformer_decoder.layers.{i}.norm1.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "transformer_decoder.layers.{i}.norm3.weight"),
)  # fmt: skip
GLOBAL_NAMES: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "embedding_layer.word_embeddings.weight"),
    ("model.norm.weight", "transformer_decoder.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
# The Model Zoo registers its final norm twice (`ln_f` is `transformer_decoder.norm`), and a
# tied LM head is the embedding under a second name: their checkpoints hold both names.
FINAL_NORM_ALIAS = "ln_f.weight"
# q/k rows differ between the layouts: HF pairs (i, i + head_dim/2), Cerebras pairs (2i, 2i+1).
QUERY = "self_attn.q_proj.weight"
KEY = "self_attn.k_proj.weight"


@dataclass(frozen=True)
class CheckpointLayout:
    """What a converter needs to know about one model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tie_embeddings: bool

    @classmethod
    def of(cls, spec: ModelSpec) -> CheckpointLayout:
        return cls(spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.tie_embeddings)

    def hf_to_cs(self) -> dict[str, str]:
        """Every Hugging Face tensor name (a tied model has no lm_head) -> its Cerebras name."""
        names = {
            hf.format(i=i): cs.format(i=i) for i in range(self.n_layers) for hf, cs in LAYER_NAMES
        }
        names |= dict(GLOBAL_NAMES)
        if self.tie_embeddings:
            del names["lm_head.weight"]
        return names

    def heads_of(self, hf_name: str) -> int | None:
        """Heads whose rows are permuted between RoPE layouts; None for other tensors."""
        if hf_name.endswith(QUERY):
            return self.n_heads
        if hf_name.endswith(KEY):
            return self.n_kv_heads
        return None


def rope_row_order(n_heads: int, head_dim: int, to_interleaved: bool) -> list[int]:
    """For each row of a converted q/k weight, the row of the source it comes from.

    Half layout: head row j < head_dim/2 is the first element of pair j, row j + head_dim/2 the
    second; interleaved: rows 2j and 2j+1 hold pair j.
    """
    half = head_dim // 2
    if to_interleaved:
        within = [pair + second * half for pair in range(half) for second in (0, 1)]
    else:
        within = [2 * pair + second for second in (0, 1) for pair in range(half)]
    return [head * head_dim + row for head in range(n_heads) for row in within]
