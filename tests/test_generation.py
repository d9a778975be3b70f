"""Generation as transformers does it: the token ids the spec reads from config.json and
generation_config.json, and the torch generate (left padding, per-row stop at EOS, sampling)
against transformers' own generate on the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig, LlamaConfig

from spec import get_preset, load_spec, to_hf_config
from spec.io import SpecFormatError


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


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        ({"eos_token_id": "x"}, "eos_token_id: Input should be a valid tuple"),
        ({"eos_token_id": []}, "eos_token_id: Tuple should have at least 1 item"),
        ({"pad_token_id": 10**6}, "pad_token_id (1000000) is not below vocab_size"),
    ],
)
def test_a_bad_id_in_generation_config_names_that_file(tmp_path, ids, error):
    """The error names generation_config.json, not the config.json the user passed."""
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(get_preset("tiny"))))
    (tmp_path / "generation_config.json").write_text(json.dumps(ids))
    with pytest.raises(SpecFormatError) as raised:
        load_spec(tmp_path / "config.json")
    assert str(raised.value).startswith(f"{tmp_path / 'generation_config.json'}: {error}")


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


# --- torch generate against transformers' generate on the same weights -----------------------

SPEC = get_preset("tiny-gqa")  # grouped-query attention, tied embeddings
LENGTHS = (5, 17, 30)  # the prompts of one left-padded batch
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(our emitted torch model, transformers' model): the same random weights, loaded by our
    loader from the folder transformers' save_pretrained wrote."""
    import torch
    from transformers import LlamaForCausalLM

    from codegen.verifier.checkpoints import random_weights
    from codegen.verifier.emitted import build_target, import_package

    root = tmp_path_factory.mktemp("generation")
    reference = LlamaForCausalLM(LlamaConfig(**to_hf_config(SPEC))).eval()
    weights = {k: torch.from_numpy(v) for k, v in random_weights(SPEC, 0, std=0.1).items()}
    reference.load_state_dict(weights, strict=False)  # tied: no lm_head.weight
    reference.save_pretrained(root / "hf")
    package = import_package(build_target(SPEC, "torch", root / "out"))
    model = package.Model().eval()
    package.load_checkpoint(model, root / "hf")
    return model, reference


def padded_batch():
    """input_ids (3, 30) left-padded with token 0 and their attention_mask, prompts of LENGTHS."""
    import torch

    rng = torch.Generator().manual_seed(7)
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        ids[row, width - length :] = torch.randint(3, SPEC.vocab_size, (length,), generator=rng)
        mask[row, width - length :] = 1
    return ids, mask


def transformers_greedy(reference, ids, mask, **kwargs):
    return reference.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs
    )


def early_eos(reference, ids, mask) -> int:
    """A token greedy decoding emits mid-way in the middle row but nowhere in the last row's
    continuation: as eos, it stops one row early while another runs to the end."""
    free = transformers_greedy(reference, ids, mask, min_new_tokens=NEW_TOKENS, pad_token_id=0)
    new = free[:, ids.shape[1] :]
    for token in new[1, 3:-3].tolist():
        if token not in new[2].tolist():
            return token
    raise AssertionError("no token stops the middle row alone; pick another seed")


def test_left_padded_greedy_batch_equals_transformers_row_by_row(models):
    """Prompts of 5, 17 and 30 tokens, left padded: the tokens of transformers' generate with
    the same attention_mask, eos and pad, including the row that stops early (then pads)."""
    model, reference = models
    ids, mask = padded_batch()
    eos = early_eos(reference, ids, mask)
    for pad in (1, None):  # None: transformers and ours pad with the (first) eos id
        theirs = transformers_greedy(reference, ids, mask, eos_token_id=[eos], pad_token_id=pad)
        ours = model.generate(
            ids, NEW_TOKENS, attention_mask=mask, eos_token_id=[eos], pad_token_id=pad
        )
        assert ours.shape == theirs.shape
        for row in range(len(LENGTHS)):
            assert ours[row].tolist() == theirs[row].tolist(), row
    stopped = ours[1, ids.shape[1] :].tolist()
    assert stopped.index(eos) < len(stopped) - 1 and eos not in ours[2, ids.shape[1] :].tolist()


def test_generation_ends_when_every_row_has_finished(models):
    """With the first greedy token of every row as eos, one step is all transformers makes."""
    model, reference = models
    ids, mask = padded_batch()
    first = model.generate(ids, 1, attention_mask=mask, eos_token_id=None)[:, -1].tolist()
    theirs = transformers_greedy(reference, ids, mask, eos_token_id=first, pad_token_id=0)
    ours = model.generate(ids, NEW_TOKENS, attention_mask=mask, eos_token_id=first, pad_token_id=0)
    assert ours.shape == theirs.shape == (3, ids.shape[1] + 1)
    assert torch_equal(ours, theirs)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_chunk_on_a_non_empty_cache_equals_the_full_forward(models):
    """Several new tokens on top of cached ones (a chat turn appended to a cached conversation)
    give transformers' logits of the whole sequence at those positions."""
    import torch

    model, reference = models
    ids = padded_batch()[0][2:]  # (1, 30), no padding
    with torch.no_grad():
        expected = reference(ids).logits[:, 20:]
        model.setup_cache(1, 30)
        try:
            model(ids[:, :20])
            actual = model(ids[:, 20:], start_pos=20)
        finally:
            model.clear_cache()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_decode_equals_transformers_prefill_at_every_position_with_padding(models):
    """The left-padded batch fed through the static cache as a 2-token prefill, then one token
    per step at a tensor start_pos, then a 6-token chunk: at every real (unpadded) position the
    logits of transformers' full forward with the same attention_mask and position_ids."""
    import torch

    model, reference = models
    ids, mask = padded_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what transformers' generate passes
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, position_ids=positions).logits
        model.setup_cache(len(LENGTHS), ids.shape[1])
        try:
            pieces = [(0, 2), *((t, t + 1) for t in range(2, 24)), (24, 30)]
            actual = torch.cat(
                [
                    model(
                        ids[:, a:b], start_pos=torch.tensor(a), position_ids=positions[:, a:b],
                        key_mask=mask,
                    )
                    for a, b in pieces
                ],
                dim=1,
            )  # fmt: skip
        finally:
            model.clear_cache()
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], rtol=1e-5, atol=1e-5)


def test_generate_prefill_computes_the_last_positions_logits_only(models):
    """As transformers' generate does (logits_to_keep=1): the head sees one position per row in
    the prefill, and logits_to_keep=1 gives the full forward's last logits."""
    import torch

    model, _ = models
    ids, mask = padded_batch()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        model.generate(ids, 2, attention_mask=mask, eos_token_id=None)
    finally:
        hook.remove()
    assert seen == [(len(LENGTHS), 1, SPEC.dim)] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(ids, logits_to_keep=1), model(ids)[:, -1:])


def test_top_k_1_sampling_equals_greedy(models):
    """Sampling restricted to the single most likely token is greedy decoding, padded or not."""
    import torch

    model, _ = models
    ids, mask = padded_batch()
    greedy = model.generate(ids, NEW_TOKENS, attention_mask=mask, eos_token_id=None)
    sampled = model.generate(
        ids, NEW_TOKENS, temperature=1.5, top_k=1, attention_mask=mask, eos_token_id=None,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(sampled, greedy)


def test_compiled_padded_generate_equals_eager_with_one_decode_graph(models):
    """compile=True on a padded batch: eager's tokens, one graph for every decode position."""
    from torch._dynamo.utils import counters

    model, _ = models
    ids, mask = padded_batch()
    eager = model.generate(ids, 8, attention_mask=mask, eos_token_id=None)
    before = counters["stats"]["unique_graphs"]
    compiled = model.generate(ids, 8, attention_mask=mask, eos_token_id=None, compile=True)
    assert torch_equal(compiled, eager)
    assert counters["stats"]["unique_graphs"] - before == 1


def test_max_new_tokens_past_the_context_is_one_line_error(models):
    model, _ = models
    ids, _ = padded_batch()
    with pytest.raises(
        ValueError, match=r"^prompt \(30\) \+ max_new_tokens \(99\) exceeds max_seq_len 128$"
    ):
        model.generate(ids, 99)


# --- sampling: top-k / top-p, seeded generators, streaming --------------------------------


def model_module(model):
    """The emitted model.py module of a Model instance (its sample and filter_logits)."""
    import sys

    return sys.modules[type(model).__module__]


@st.composite
def sampling_cases(draw):
    """Distinct random logits (vocab 2..40), a temperature and top_k / top_p (None: off)."""
    vocab = draw(st.integers(2, 40))
    logits = draw(st.lists(st.floats(-8, 8, width=32), min_size=vocab, max_size=vocab, unique=True))
    top_k = draw(st.none() | st.integers(1, vocab))
    top_p = draw(st.none() | st.floats(0.01, 1.0))
    return np.array(logits, np.float32), draw(st.floats(0.3, 3.0)), top_k, top_p


def allowed_tokens(logits: np.ndarray, temperature: float, top_k, top_p) -> set[int]:
    """The tokens top-k then top-p keep, from the definitions, in float64 with numpy: the k most
    likely, then the smallest most-likely-first prefix of those whose renormalised probability
    reaches top_p. Rejects (hypothesis.assume) cases within 1e-4 of top_p's boundary, where
    float32 rounding may decide."""
    order = np.argsort(-logits.astype(np.float64), kind="stable")  # most likely first
    kept = order[: top_k if top_k is not None else len(order)]
    if top_p is None:
        return set(kept.tolist())
    scaled = logits[kept].astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    cumulative = np.cumsum(probs / probs.sum())
    assume(np.all(np.abs(cumulative[:-1] - top_p) > 1e-4))
    size = int(np.searchsorted(cumulative, top_p)) + 1  # first prefix reaching top_p
    return set(kept[: min(size, len(kept))].tolist())


@settings(max_examples=40)  # cheap: no model runs
@given(case=sampling_cases())
def test_sampling_never_leaves_the_top_k_top_p_set(models, case):
    """4000 draws from one row of logits all fall in the allowed set computed independently."""
    import torch

    logits, temperature, top_k, top_p = case
    allowed = allowed_tokens(logits, temperature, top_k, top_p)
    rows = torch.from_numpy(logits).repeat(4000, 1)
    tokens = model_module(models[0]).sample(
        rows, temperature, top_k, top_p, torch.Generator().manual_seed(0)
    )
    assert set(tokens[:, 0].tolist()) <= allowed


@settings(max_examples=40)
@given(case=sampling_cases())
def test_filter_keeps_what_transformers_warpers_keep(models, case):
    """Our filter_logits keeps exactly the tokens of transformers' TopKLogitsWarper followed by
    TopPLogitsWarper (generate's order), on logits already divided by the temperature."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits, temperature, top_k, top_p = case
    scores = torch.from_numpy(logits)[None] / temperature
    theirs = scores.clone()
    if top_k is not None:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p is not None and top_p < 1.0:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    ours = model_module(models[0]).filter_logits(scores, top_k, top_p)
    assert torch.equal(ours.isinf(), theirs.isinf())


def test_seeded_sampling_repeats_and_seeds_differ(models):
    import torch

    model, _ = models
    ids, mask = padded_batch()

    def sampled(seed):
        return model.generate(
            ids, NEW_TOKENS, temperature=1.5, top_k=40, top_p=0.95, attention_mask=mask,
            eos_token_id=None, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    assert torch.equal(sampled(0), sampled(0))
    assert not torch.equal(sampled(0), sampled(1))


def test_tiny_top_p_sampling_equals_greedy(models):
    """top_p so small that only the most likely token reaches it: greedy decoding (1 - 1e-9 is
    1.0 in float32, so every cumulative probability is within it: the most likely token must
    still stay)."""
    import torch

    model, _ = models
    ids, mask = padded_batch()
    greedy = model.generate(ids, NEW_TOKENS, attention_mask=mask, eos_token_id=None)
    sampled = model.generate(
        ids, NEW_TOKENS, temperature=1.0, top_p=1e-9, attention_mask=mask, eos_token_id=None,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(sampled, greedy)


def test_stream_yields_generates_tokens_step_by_step(models):
    """Greedy with a row stopping early, and seeded sampling: the streamed steps (B, 1) are
    generate's new tokens; closing the stream early frees the KV cache."""
    import torch

    model, reference = models
    ids, mask = padded_batch()
    eos = early_eos(reference, ids, mask)
    greedy = {"attention_mask": mask, "eos_token_id": [eos], "pad_token_id": 1}
    sampling = {"attention_mask": mask, "eos_token_id": None, "temperature": 1.0, "top_p": 0.9}
    for kwargs in (greedy, sampling):
        whole = model.generate(
            ids, NEW_TOKENS, **kwargs, generator=torch.Generator().manual_seed(3)
        )
        steps = list(
            model.stream(ids, NEW_TOKENS, **kwargs, generator=torch.Generator().manual_seed(3))
        )
        assert all(step.shape == (len(LENGTHS), 1) for step in steps)
        assert torch.equal(torch.cat([ids, *steps], dim=1), whole)
    stream = model.stream(ids, NEW_TOKENS, attention_mask=mask)
    next(stream)
    assert model.model.layers[0].self_attn.kv_cache is not None
    stream.close()
    assert model.model.layers[0].self_attn.kv_cache is None


@pytest.mark.parametrize(
    ("options", "message"),
    [({"top_k": 0}, "top_k must be at least 1, got 0"),
     ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
     ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5")],
)  # fmt: skip
def test_bad_sampling_options_are_one_line_errors_at_the_call(models, options, message):
    model, _ = models
    ids, _ = padded_batch()
    with pytest.raises(ValueError, match=f"^{message}$"):
        model.stream(ids, 4, temperature=1.0, **options)  # raised before any step runs
