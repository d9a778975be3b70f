"""The LLaMA decoder as ONNX graphs, built node by node from the spec (not traced).

Standard-domain opset 23: RMSNormalization, RotaryEmbedding (half layout, `interleaved=0`) and
Attention (`q_num_heads`, `kv_num_heads`, a boolean mask, past/present key and value), all of which
onnxruntime runs on CPU. Activations are float32; weights stored in another floating dtype are
cast to float32 in the graph. Weights keep Hugging Face's names and [out, in] layout; the graph
transposes them. RoPE angles are computed in float64 inside the graph, so no table of
max_seq_len rows is stored and the graph stays small at any context length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from spec import ModelSpec
from spec.weights import hf_name

from .quantized import PART_BITS, Quantization, quantized_matmul, quantized_shapes

OPSET = 23
IR_VERSION = 11  # the IR version that introduced opset 23
PRODUCER = "llama-codegen"
ONNX_DTYPES = {"F32": TensorProto.FLOAT, "BF16": TensorProto.BFLOAT16, "F16": TensorProto.FLOAT16}
# the integer parts of quantized weights (quantized.py)
ONNX_DTYPES |= {"I8": TensorProto.INT8, "U4": TensorProto.UINT4}

# Dimension names onnxruntime-genai's model builder uses.
BATCH, SEQ = "batch_size", "sequence_length"
PAST, TOTAL = "past_sequence_length", "total_sequence_length"


@dataclass(frozen=True)
class Weight:
    """One initializer: bytes inline (`data`), or `length` bytes at `offset` of file `location`
    (relative to the folder the graph's external data is resolved against)."""

    name: str
    dtype: str  # safetensors code: F32, BF16, F16; quantized parts: I8, U4 (uint4)
    shape: tuple[int, ...]
    location: str = ""
    offset: int = 0
    length: int = 0
    data: bytes | None = None

    def tensor(self) -> TensorProto:
        tensor = TensorProto(name=self.name, data_type=ONNX_DTYPES[self.dtype], dims=self.shape)
        if self.data is not None:
            tensor.raw_data = self.data
            return tensor
        tensor.data_location = TensorProto.EXTERNAL
        entries = {"location": self.location, "offset": self.offset, "length": self.length}
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=str(value))
        return tensor


class GraphBuilder:
    """Nodes in topological order; every node is named after its (first) output."""

    def __init__(
        self, spec: ModelSpec | None = None, quantization: Quantization | None = None
    ) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.quantization = quantization
        # HF name -> (out, in) of each weight of `spec` stored quantized
        self.quantized = quantized_shapes(spec) if spec and quantization else {}

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        return self.ops(op_type, inputs, [output], **attrs)[0]

    def ops(
        self, op_type: str, inputs: list[str], outputs: list[str], **attrs: object
    ) -> list[str]:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, weight: Weight) -> str:
        """The initializer, as a float32 value (cast in the graph when stored otherwise; the
        integer parts of a quantized weight as they are)."""
        self.initializers.append(weight.tensor())
        if weight.dtype in ("F32", *PART_BITS):
            return weight.name
        return self.op("Cast", [weight.name], weight.name + ".float32", to=TensorProto.FLOAT)

    def rms_norm(self, x: str, weight: str, eps: float, output: str) -> str:
        """x * rsqrt(mean(x^2) + eps) * weight over the last axis, computed in float32."""
        return self.op("RMSNormalization", [x, weight], output, axis=-1, epsilon=eps)

    def rope(self, x: str, tables: tuple[str, str], heads: int, output: str) -> str:
        """Rotate pairs (i, i + head_dim/2) of each head of x (B, T, heads * head_dim)."""
        return self.op("RotaryEmbedding", [x, *tables], output, interleaved=0, num_heads=heads)

    def linear(self, x: str, weight: str, output: str, bias: str | None = None) -> str:
        """x @ weight.T (+ bias [out]) for a Hugging Face [out, in] weight (a quantized one:
        its HF name, whose parts quantized.py lays out)."""
        if weight in self.quantized:
            product = quantized_matmul(
                self, x, weight, output if bias is None else output + ".matmul"
            )
        else:
            transposed = self.op("Transpose", [weight], weight + ".T", perm=[1, 0])
            product = self.op(
                "MatMul", [x, transposed], output if bias is None else output + ".matmul"
            )
        if bias is None:
            return product
        return self.op("Add", [product, bias], output)


def tensor_info(name: str, dtype: int, shape: list[int | str]) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def inv_frequencies(spec: ModelSpec, long: bool = False) -> np.ndarray:
    return np.array(spec.rope_inv_freq(long), dtype=np.float64)


def scaled_inv_frequencies(g: GraphBuilder, spec: ModelSpec) -> str:
    """The RoPE inverse frequencies (head_dim / 2,), float64. LongRoPE: the long factors' once
    the sequence (the highest of position_ids + 1) passes original_max_position_embeddings, the
    short ones' until then, for every position of the call (transformers'
    `longrope_frequency_update`)."""
    inv_freq = g.constant("rope.inv_freq", inv_frequencies(spec))  # (head_dim / 2,), float64
    scaling = spec.rope_scaling
    if scaling is None or scaling.type != "longrope":
        return inv_freq
    highest = g.op("ReduceMax", ["position_ids"], "rope.highest_position", keepdims=0)
    end = g.op("Add", [highest, g.constant("rope.one", np.array(1, dtype=np.int64))], "rope.end")
    original = np.array(scaling.original_max_position_embeddings, dtype=np.int64)
    is_long = g.op("Greater", [end, g.constant("rope.original_len", original)], "rope.is_long")
    long_freq = g.constant("rope.inv_freq_long", inv_frequencies(spec, long=True))
    return g.op("Where", [is_long, long_freq, inv_freq], "rope.inv_freq_used")


def rope_tables(g: GraphBuilder, spec: ModelSpec) -> tuple[str, str]:
    """cos and sin (batch, seq, head_dim / 2) at each row's positions (input position_ids),
    times YaRN's or LongRoPE's attention factor."""
    positions = g.op("Cast", ["position_ids"], "positions.float64", to=TensorProto.DOUBLE)
    axis_last = g.constant("axis_last", np.array([-1], dtype=np.int64))
    positions = g.op("Unsqueeze", [positions, axis_last], "positions.column")  # (B, T, 1)
    inv_freq = scaled_inv_frequencies(g, spec)  # (head_dim / 2,), float64
    angles = g.op("Mul", [positions, inv_freq], "rope.angles")  # (B, T, head_dim / 2), float64
    tables = []
    for fn in ("Cos", "Sin"):
        name = "rope." + fn.lower()
        table = g.op(fn, [angles], name + ".float64")
        if spec.rope_attention_factor() != 1:  # YaRN, LongRoPE: cos and sin are scaled
            factor = np.array(spec.rope_attention_factor(), dtype=np.float64)
            table = g.op(
                "Mul", [table, g.constant("rope.attention_factor", factor)], name + ".scaled"
            )
        tables.append(g.op("Cast", [table], name, to=TensorProto.FLOAT))
    return tables[0], tables[1]


def projection(
    g: GraphBuilder, w: dict[str, str], x: str, key: str, bias: str, i: int, out: str
) -> str:
    """Layer i's HF Linear `key` applied to x, with its bias row `bias` when the weights hold it
    (attention_bias, mlp_bias)."""
    return g.linear(x, w[hf_name(key, i)], out, w.get(hf_name(bias, i)))


def visible_keys(g: GraphBuilder, with_past: bool) -> str:
    """Which keys each new token sees, bool (batch, 1, seq, total): the causal rule on cache
    slots (new token t sits at slot past_len + t) and no key where attention_mask is 0 (left
    padding), except a padding token's own slot, so that its softmax has a key (as the emitted
    torch and JAX models do; no real token ever attends to it)."""
    one = g.constant("one", np.array(1, dtype=np.int64))
    zero = g.constant("zero", np.array(0, dtype=np.int64))
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [seq]
    if with_past:
        past = g.op("Shape", ["past_key_values.0.key"], "past_len", start=2, end=3)  # [past]
        total = g.op("Add", [past, seq_len], "total_len")
        first = g.op("Squeeze", [past], "first_slot")
    else:
        total, first = seq_len, zero
    last = g.op("Squeeze", [total], "end_slot")
    axis_0 = g.constant("axis_0", np.array([0], dtype=np.int64))
    axis_1 = g.constant("axis_1", np.array([1], dtype=np.int64))
    queries = g.op("Range", [first, last, one], "query_slots")  # (seq,)
    queries = g.op("Unsqueeze", [queries, axis_1], "query_slots.column")  # (seq, 1)
    keys = g.op("Range", [zero, last, one], "key_slots")  # (total,)
    keys = g.op("Unsqueeze", [keys, axis_0], "key_slots.row")  # (1, total)
    causal = g.op("LessOrEqual", [keys, queries], "mask.causal")  # (seq, total)
    itself = g.op("Equal", [keys, queries], "mask.itself")
    kept = g.op("Cast", ["attention_mask"], "mask.kept", to=TensorProto.BOOL)  # (batch, total)
    axes_12 = g.constant("axes_1_2", np.array([1, 2], dtype=np.int64))
    kept = g.op("Unsqueeze", [kept, axes_12], "mask.kept.4d")  # (batch, 1, 1, total)
    kept = g.op("Or", [kept, itself], "mask.kept_or_itself")  # (batch, 1, seq, total)
    return g.op("And", [kept, causal], "mask.visible")


def attention(
    g: GraphBuilder,
    spec: ModelSpec,
    i: int,
    w: dict[str, str],
    x: str,
    rope: tuple[str, str],
    visible: str,
    with_past: bool,
) -> str:
    """x + o_proj(attention(rope(q), rope(k), v)) for layer i; with_past reads and extends the
    layer's KV cache (past_key_values.{i}.* -> present.{i}.*)."""
    out = f"layers.{i}."
    h = g.rms_norm(x, w[hf_name("attn_norm", i)], spec.norm_eps, out + "attn_norm")
    q = projection(g, w, h, "wq", "bq", i, out + "q")  # (B, T, n_heads * head_dim)
    k = projection(g, w, h, "wk", "bk", i, out + "k")  # (B, T, kv_heads * head_dim)
    v = projection(g, w, h, "wv", "bv", i, out + "v")
    q = g.rope(q, rope, spec.n_heads, out + "q_rope")
    k = g.rope(k, rope, spec.n_kv_heads, out + "k_rope")
    cache_in = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"] if with_past else []
    cache_out = [f"present.{i}.key", f"present.{i}.value"] if with_past else []
    y = g.ops(
        "Attention",
        [q, k, v, visible, *cache_in],
        [out + "attn", *cache_out],
        is_causal=0,  # the mask holds the causal rule with the padding
        q_num_heads=spec.n_heads,
        kv_num_heads=spec.n_kv_heads,
        scale=float(1 / np.sqrt(spec.head_dim)),
    )[0]  # (B, T, n_heads * head_dim)
    y = projection(g, w, y, "wo", "bo", i, out + "attn_out")  # (B, T, dim)
    return g.op("Add", [x, y], out + "attn_residual")


def mlp(g: GraphBuilder, spec: ModelSpec, i: int, w: dict[str, str], x: str) -> str:
    """x + down(silu(gate(h)) * up(h)) with h = RMSNorm(x), for layer i."""
    out = f"layers.{i}."
    h = g.rms_norm(x, w[hf_name("mlp_norm", i)], spec.norm_eps, out + "mlp_norm")
    gate = projection(g, w, h, "w_gate", "b_gate", i, out + "gate")  # (B, T, hidden_dim)
    up = projection(g, w, h, "w_up", "b_up", i, out + "up")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], out + "gate_sigmoid")], out + "silu")
    y = projection(
        g, w, g.op("Mul", [silu, up], out + "swiglu"), "w_down", "b_down", i, out + "mlp_out"
    )
    return g.op("Add", [x, y], out + "mlp_residual")


def decoder(
    spec: ModelSpec,
    weights: dict[str, Weight],
    with_past: bool,
    quantization: Quantization | None = None,
) -> ModelProto:
    """input_ids (batch, seq), attention_mask (batch, total: past and new tokens; 0 at left
    padding) and position_ids (batch, seq: each row's RoPE positions) -> logits (batch, seq,
    vocab), the inputs onnxruntime-genai feeds; with_past also takes and returns the KV cache,
    past_key_values.{i}.key/value -> present.{i}.key/value, each of shape
    (batch, kv_heads, length, head_dim). With `quantization`, `weights` holds the parts of every
    quantized weight (quantized.py) instead of its float tensor."""
    g = GraphBuilder(spec, quantization)
    w = {name: g.weight(weight) for name, weight in weights.items()}
    w |= {name: name for name in g.quantized}  # linear() finds their parts by the HF name
    rope = rope_tables(g, spec)
    visible = visible_keys(g, with_past)
    x = g.op("Gather", [w[hf_name("embed")], "input_ids"], "embeddings", axis=0)
    for i in range(spec.n_layers):
        x = mlp(g, spec, i, w, attention(g, spec, i, w, x, rope, visible, with_past))
    x = g.rms_norm(x, w[hf_name("norm")], spec.norm_eps, "final_norm")
    head = hf_name("embed" if spec.tie_embeddings and not quantization else "lm_head")
    g.linear(x, w[head], "logits")  # (B, T, vocab)

    kv, hd = spec.n_kv_heads, spec.head_dim
    inputs = [
        tensor_info("input_ids", TensorProto.INT64, [BATCH, SEQ]),
        tensor_info("attention_mask", TensorProto.INT64, [BATCH, TOTAL]),
        tensor_info("position_ids", TensorProto.INT64, [BATCH, SEQ]),
    ]
    outputs = [tensor_info("logits", TensorProto.FLOAT, [BATCH, SEQ, spec.vocab_size])]
    for i in range(spec.n_layers if with_past else 0):
        for kind in ("key", "value"):
            inputs.append(
                tensor_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, [BATCH, kv, PAST, hd])
            )
            outputs.append(
                tensor_info(f"present.{i}.{kind}", TensorProto.FLOAT, [BATCH, kv, TOTAL, hd])
            )
    kind = "decode with KV cache" if with_past else "prefill"
    graph = helper.make_graph(
        g.nodes,
        f"llama_{spec.name}_{'with_past' if with_past else 'prefill'}",
        inputs,
        outputs,
        initializer=g.initializers,
        doc_string=f"LLaMA {spec.name} ({spec.param_count:,} parameters), {kind}; float32.",
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
    )
