"""The weight table: every tensor of a LLaMA checkpoint, once, with every fact about it.

One `WeightInfo` per tensor (per decoder layer: once, with `{i}` for the layer index), in the
order the ONNX graph and the Hugging Face checkpoint list them. Every loader, converter, sharding
rule, shape check and test helper reads this table (in the spirit of jax-llm-examples'
per-weight `ArrayInfo`: shape, logical axes and initialiser together), and the templates print
its rows, so a name or a shape rule is written here and nowhere else.

Sources of the facts:
- Hugging Face names and (out, in) layout: transformers' `LlamaForCausalLM` state dict.
- Meta names, the interleaved RoPE layout of q/k rows and the split dims of model-parallel
  `consolidated.NN.pth` shards: Meta's `llama/model.py` (ColumnParallelLinear splits dim 0,
  RowParallelLinear and ParallelEmbedding dim 1; Llama 3's `llama3/model.py` embeds with
  VocabParallelEmbedding, dim 0) and transformers' `convert_llama_weights_to_hf.py` (its
  `permute` of wq/wk, and its `concat_dim = 0 if is_llama_3(llama_version) else 1` for
  tok_embeddings).
- Cerebras names: the Model Zoo's LLaMA converter (GPT2LMHeadModel configured as LLaMA), whose
  q/k rows are in the interleaved layout too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .model import ModelSpec


class LogicalAxis(str, Enum):
    """Names of weight (and batch) dimensions, independent of any mesh."""

    vocab = "vocab"
    embed = "embed"
    heads = "heads"
    kv_heads = "kv_heads"
    head_dim = "head_dim"
    mlp = "mlp"
    layers = "layers"  # the stacked-layers axis of a scanned model
    batch = "batch"  # activations: rows of a batch


class Init(str, Enum):
    """How a fresh weight is drawn."""

    normal = "normal"  # normal(0, init_std)
    ones = "ones"  # RMSNorm gains
    zeros = "zeros"  # biases (transformers' LlamaPreTrainedModel zeroes nn.Linear biases)


class TensorParallel(str, Enum):
    """Megatron-style role of a weight under tensor parallelism (torch's ParallelStyle)."""

    colwise = "colwise"  # output rows split: q/k/v, gate/up, lm_head
    rowwise = "rowwise"  # input columns split: o, down; the embedding's vocabulary rows
    replicated = "replicated"  # norms


_L = LogicalAxis
# Each dimension of a weight in Hugging Face's (out, in) layout, as the logical axes whose
# lengths multiply to it, major first: q_proj's rows are heads x head_dim.
Dims = tuple[tuple[LogicalAxis, ...], ...]


@dataclass(frozen=True)
class WeightInfo:
    """One tensor of the model. Names of decoder-layer weights hold `{i}` for the layer index."""

    key: str  # our name for it: the JAX params leaf, the Cerebras/torch context's handle
    hf: str  # Hugging Face name
    meta: str | None  # Meta (consolidated.NN.pth) name; None: Meta checkpoints have none (biases)
    cerebras: str  # Cerebras Model Zoo name
    dims: Dims  # Hugging Face (out, in) layout, in logical axes
    init: Init
    tensor_parallel: TensorParallel
    rope_heads: LogicalAxis | None = None  # q/k: rows permuted between RoPE layouts, per head
    meta_shard_dim: int | None = None  # dim Meta's model-parallel shards split; None: replicated
    # a dim a later Meta release splits instead (Llama 3's VocabParallelEmbedding: the vocab)
    meta_shard_alt_dim: int | None = None
    tied_absent: bool = False  # not a tensor of its own when the embeddings are tied
    # A bias: present only when this ModelSpec flag is true (attention_bias, mlp_bias)
    bias_flag: str | None = None

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    @property
    def meta_shard_dims(self) -> tuple[int, ...]:
        """Every dim Meta's model-parallel shards of this tensor may be split along; a loader
        picks the one along which the shards join to the model's shape (never by name)."""
        dims = (self.meta_shard_dim, self.meta_shard_alt_dim)
        return tuple(dim for dim in dims if dim is not None)

    @property
    def axes(self) -> tuple[LogicalAxis, ...]:
        """One logical axis per dimension: a flattened one carries its major axis."""
        return tuple(dim[0] for dim in self.dims)

    @property
    def head_axes(self) -> tuple[LogicalAxis, ...]:
        """Every logical axis, flattened dimensions split (q_proj: heads, head_dim, embed)."""
        return tuple(axis for dim in self.dims for axis in dim)

    @property
    def jax_path(self) -> tuple[str, ...]:
        """Where the JAX params pytree holds it (decoder layers stacked under "layers")."""
        return ("layers", self.key) if self.per_layer else (self.key,)

    @property
    def jax_transposed(self) -> bool:
        """JAX holds matrices (in, out), the transpose of HF's; the embedding is a lookup table."""
        return len(self.dims) == 2 and self.key != "embed"

    @property
    def quantized(self) -> bool:
        """Whether `--quantize` stores it as integers: every linear layer's weight, the head
        included (the largest matrix of small models; gpt-fast and llama.cpp quantize it too).
        The embedding stays float: a lookup reads one row per token, so its bytes never bound
        decoding; norms and biases are vectors."""
        return self.jax_transposed

    @property
    def module(self) -> str:
        """The HF module name (`q_proj`), which torch's tensor-parallel plan addresses."""
        return self.hf.split(".")[-2]

    def shape(self, spec: ModelSpec) -> tuple[int, ...]:
        """The Hugging Face shape for `spec`."""
        sizes = axis_sizes(spec)
        return tuple(math.prod(sizes[axis] for axis in dim) for dim in self.dims)

    def shape_expr(self, template: str) -> str:
        """The shape as Python source over the emitted config, each axis's CONFIG_ATTRIBUTES name
        put into `template`: "args.{}" gives `(args.n_heads * args.head_dim, args.dim)`."""
        dims = [
            " * ".join(template.format(CONFIG_ATTRIBUTES[axis]) for axis in dim)
            for dim in self.dims
        ]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


WEIGHTS: tuple[WeightInfo, ...] = (
    WeightInfo(
        key="embed",
        hf="model.embed_tokens.weight",
        meta="tok_embeddings.weight",
        cerebras="embedding_layer.word_embeddings.weight",
        dims=((_L.vocab,), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.rowwise,
        meta_shard_dim=1,  # LLaMA 1/2: ParallelEmbedding splits the embedding dim
        meta_shard_alt_dim=0,  # Llama 3: VocabParallelEmbedding splits the vocabulary
    ),
    WeightInfo(
        key="attn_norm",
        hf="model.layers.{i}.input_layernorm.weight",
        meta="layers.{i}.attention_norm.weight",
        cerebras="transformer_decoder.layers.{i}.norm1.weight",
        dims=((_L.embed,),),
        init=Init.ones,
        tensor_parallel=TensorParallel.replicated,
    ),
    WeightInfo(
        key="wq",
        hf="model.layers.{i}.self_attn.q_proj.weight",
        meta="layers.{i}.attention.wq.weight",
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_q_dense_layer.weight",
        dims=((_L.heads, _L.head_dim), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        rope_heads=_L.heads,
        meta_shard_dim=0,
    ),
    WeightInfo(
        key="bq",
        hf="model.layers.{i}.self_attn.q_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_q_dense_layer.bias",
        dims=((_L.heads, _L.head_dim),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.colwise,
        rope_heads=_L.heads,
        bias_flag="attention_bias",
    ),
    WeightInfo(
        key="wk",
        hf="model.layers.{i}.self_attn.k_proj.weight",
        meta="layers.{i}.attention.wk.weight",
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_k_dense_layer.weight",
        dims=((_L.kv_heads, _L.head_dim), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        rope_heads=_L.kv_heads,
        meta_shard_dim=0,
    ),
    WeightInfo(
        key="bk",
        hf="model.layers.{i}.self_attn.k_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_k_dense_layer.bias",
        dims=((_L.kv_heads, _L.head_dim),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.colwise,
        rope_heads=_L.kv_heads,
        bias_flag="attention_bias",
    ),
    WeightInfo(
        key="wv",
        hf="model.layers.{i}.self_attn.v_proj.weight",
        meta="layers.{i}.attention.wv.weight",
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_v_dense_layer.weight",
        dims=((_L.kv_heads, _L.head_dim), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        meta_shard_dim=0,
    ),
    WeightInfo(
        key="bv",
        hf="model.layers.{i}.self_attn.v_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_v_dense_layer.bias",
        dims=((_L.kv_heads, _L.head_dim),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.colwise,
        bias_flag="attention_bias",
    ),
    WeightInfo(
        key="wo",
        hf="model.layers.{i}.self_attn.o_proj.weight",
        meta="layers.{i}.attention.wo.weight",
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_output_dense_layer.weight",
        dims=((_L.embed,), (_L.heads, _L.head_dim)),
        init=Init.normal,
        tensor_parallel=TensorParallel.rowwise,
        meta_shard_dim=1,
    ),
    WeightInfo(
        key="bo",
        hf="model.layers.{i}.self_attn.o_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.self_attn.proj_output_dense_layer.bias",
        dims=((_L.embed,),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.replicated,
        bias_flag="attention_bias",
    ),
    WeightInfo(
        key="mlp_norm",
        hf="model.layers.{i}.post_attention_layernorm.weight",
        meta="layers.{i}.ffn_norm.weight",
        cerebras="transformer_decoder.layers.{i}.norm3.weight",
        dims=((_L.embed,),),
        init=Init.ones,
        tensor_parallel=TensorParallel.replicated,
    ),
    WeightInfo(
        key="w_gate",
        hf="model.layers.{i}.mlp.gate_proj.weight",
        meta="layers.{i}.feed_forward.w1.weight",
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer_for_glu.weight",
        dims=((_L.mlp,), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        meta_shard_dim=0,
    ),
    WeightInfo(
        key="b_gate",
        hf="model.layers.{i}.mlp.gate_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer_for_glu.bias",
        dims=((_L.mlp,),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.colwise,
        bias_flag="mlp_bias",
    ),
    WeightInfo(
        key="w_up",
        hf="model.layers.{i}.mlp.up_proj.weight",
        meta="layers.{i}.feed_forward.w3.weight",
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer.weight",
        dims=((_L.mlp,), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        meta_shard_dim=0,
    ),
    WeightInfo(
        key="b_up",
        hf="model.layers.{i}.mlp.up_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.0.linear_layer.bias",
        dims=((_L.mlp,),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.colwise,
        bias_flag="mlp_bias",
    ),
    WeightInfo(
        key="w_down",
        hf="model.layers.{i}.mlp.down_proj.weight",
        meta="layers.{i}.feed_forward.w2.weight",
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.1.linear_layer.weight",
        dims=((_L.embed,), (_L.mlp,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.rowwise,
        meta_shard_dim=1,
    ),
    WeightInfo(
        key="b_down",
        hf="model.layers.{i}.mlp.down_proj.bias",
        meta=None,
        cerebras="transformer_decoder.layers.{i}.ffn.ffn.1.linear_layer.bias",
        dims=((_L.embed,),),
        init=Init.zeros,
        tensor_parallel=TensorParallel.replicated,
        bias_flag="mlp_bias",
    ),
    WeightInfo(
        key="norm",
        hf="model.norm.weight",
        meta="norm.weight",
        cerebras="transformer_decoder.norm.weight",
        dims=((_L.embed,),),
        init=Init.ones,
        tensor_parallel=TensorParallel.replicated,
    ),
    WeightInfo(
        key="lm_head",
        hf="lm_head.weight",
        meta="output.weight",
        cerebras="lm_head.weight",
        dims=((_L.vocab,), (_L.embed,)),
        init=Init.normal,
        tensor_parallel=TensorParallel.colwise,
        meta_shard_dim=0,
        tied_absent=True,
    ),
)
BY_KEY: dict[str, WeightInfo] = {w.key: w for w in WEIGHTS}
# The Model Zoo registers its final norm twice (`ln_f` is `transformer_decoder.norm`), and a
# tied LM head is the embedding under a second name: its checkpoints hold both names.
CEREBRAS_FINAL_NORM_ALIAS = "ln_f.weight"
# LLaMA 1's consolidated.NN.pth also stores its RoPE frequencies, which we compute instead.
META_ROPE_FREQS = "rope.freqs"

# The attribute of the emitted config (torch ModelArgs, JAX Config) holding each axis's length.
CONFIG_ATTRIBUTES: dict[LogicalAxis, str] = {
    _L.vocab: "vocab_size",
    _L.embed: "dim",
    _L.heads: "n_heads",
    _L.kv_heads: "n_kv_heads",
    _L.head_dim: "head_dim",
    _L.mlp: "hidden_dim",
    _L.layers: "n_layers",
}


def axis_sizes(spec: ModelSpec) -> dict[LogicalAxis, int]:
    """The length of every weight axis for `spec`."""
    return {
        _L.vocab: spec.vocab_size,
        _L.embed: spec.dim,
        _L.heads: spec.n_heads,
        _L.kv_heads: spec.n_kv_heads,
        _L.head_dim: spec.head_dim,
        _L.mlp: spec.ffn_dim,
        _L.layers: spec.n_layers,
    }


def has_bias_rows(spec: ModelSpec | None, weight: WeightInfo) -> bool:
    """Whether `weight` is a tensor of `spec`'s layers as far as biases go (None: a spec with no
    biases, as every LLaMA and every Meta checkpoint)."""
    return weight.bias_flag is None or bool(spec is not None and getattr(spec, weight.bias_flag))


def present(spec_or_tied: ModelSpec | bool) -> tuple[WeightInfo, ...]:
    """The table's rows a model has: no lm_head when the embeddings are tied, biases only when
    the spec has them (given only `tied`, a model without biases)."""
    spec = None if isinstance(spec_or_tied, bool) else spec_or_tied
    tied = spec_or_tied if spec is None else spec.tie_embeddings
    return tuple(w for w in WEIGHTS if not (tied and w.tied_absent) and has_bias_rows(spec, w))


def hf_name(key: str, layer: int | None = None) -> str:
    """The Hugging Face name of weight `key` (of decoder layer `layer`)."""
    name = BY_KEY[key].hf
    return name if layer is None else name.format(i=layer)


def hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face checkpoint of `spec`, in graph order (the table's order with
    the decoder layers spelled out where they stand: embedding, layer 0, ..., final norm, head)."""
    rows = present(spec)
    layer_rows = [w for w in rows if w.per_layer]
    shapes: dict[str, tuple[int, ...]] = {}
    for weight in rows:
        if not weight.per_layer:
            shapes[weight.hf] = weight.shape(spec)
        elif weight is layer_rows[0]:
            for i in range(spec.n_layers):
                shapes |= {w.hf.format(i=i): w.shape(spec) for w in layer_rows}
    return shapes


def per_name(attribute: str, spec_or_layers: ModelSpec | int, tied: bool = False) -> dict[str, str]:
    """HF name -> the weight's `attribute` name ("meta", "cerebras"), every layer spelled out."""
    if isinstance(spec_or_layers, ModelSpec):
        layers, tied = spec_or_layers.n_layers, spec_or_layers.tie_embeddings
    else:
        layers = spec_or_layers
    names: dict[str, str] = {}
    for weight in present(tied):
        other = getattr(weight, attribute)
        for i in range(layers) if weight.per_layer else (None,):
            names[weight.hf if i is None else weight.hf.format(i=i)] = (
                other if i is None else other.format(i=i)
            )
    return names


def by_hf_name(name: str) -> WeightInfo | None:
    """The row of an HF tensor name (`model.layers.3.self_attn.q_proj.weight`), else None."""
    parts = name.split(".")
    if len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        name = ".".join([*parts[:2], "{i}", *parts[3:]])
    return next((w for w in WEIGHTS if w.hf == name), None)


def sizes_by_attribute(spec: ModelSpec) -> dict[str, int]:
    """Each axis's length under its emitted config name (CONFIG_ATTRIBUTES): {"dim": 4096, ...}."""
    return {CONFIG_ATTRIBUTES[axis]: size for axis, size in axis_sizes(spec).items()}


def template_rows(template: str, spec: ModelSpec | None = None) -> list[dict[str, object]]:
    """The table as templates print it: names, and the shape as an expression over the emitted
    config (see WeightInfo.shape_expr). Bias rows only where `spec` has those biases; the head
    is listed even when tied (templates test `tied_absent`)."""
    return [
        {
            "key": w.key,
            "hf": w.hf,
            "meta": w.meta,
            "cerebras": w.cerebras,
            "per_layer": w.per_layer,
            "tied_absent": w.tied_absent,
            "shape": w.shape_expr(template),
            "rope_heads": CONFIG_ATTRIBUTES[w.rope_heads] if w.rope_heads else None,
            # the same as an expression over the emitted config ("None" for other tensors)
            "rope_heads_expr": (
                template.format(CONFIG_ATTRIBUTES[w.rope_heads]) if w.rope_heads else "None"
            ),
            "meta_shard_dim": w.meta_shard_dim,
            "meta_shard_dims": w.meta_shard_dims,
            "init": w.init.value,
            "tensor_parallel": w.tensor_parallel.value,
            "jax_transposed": w.jax_transposed,
            "module": w.module,
            "is_bias": w.bias_flag is not None,
        }
        for w in WEIGHTS
        if has_bias_rows(spec, w)
    ]
