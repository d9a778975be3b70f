"""Generation in the JAX and ONNX targets as transformers does it: left-padded batches, per-row
stop at EOS then padding, sampling restricted to the top-k / top-p set; right values from
transformers' own generate and logits warpers on the same weights (the torch twin of these
tests is tests/test_generation.py, whose batch and EOS choice they reuse)."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig

from backends import BuildOptions
from codegen.verifier.emitted import build_target, import_file, import_package
from spec import to_hf_config
from tests.test_generation import LENGTHS, NEW_TOKENS, SPEC, early_eos, padded_batch

jax = pytest.importorskip("jax")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(transformers' model with random weights, the folder save_pretrained wrote it to)."""
    import torch
    from transformers import LlamaForCausalLM

    from codegen.verifier.checkpoints import random_weights

    root = tmp_path_factory.mktemp("generation-targets")
    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(SPEC))).eval()
    weights = {k: torch.from_numpy(v) for k, v in random_weights(SPEC, 0, std=0.1).items()}
    model.load_state_dict(weights, strict=False)  # tied: no lm_head.weight
    model.save_pretrained(root / "hf")
    return model, root / "hf"


@pytest.fixture(scope="module")
def jax_model(reference, tmp_path_factory):
    """(the emitted JAX package, its params loaded from the reference's folder)."""
    package = import_package(build_target(SPEC, "jax", tmp_path_factory.mktemp("jax")))
    return package, package.load_checkpoint(reference[1])


def theirs(reference, eos, pad):
    """transformers' greedy tokens for the padded batch, (3, 30 + steps)."""
    ids, mask = padded_batch()
    return reference.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
        eos_token_id=[eos], pad_token_id=pad,
    ).numpy()  # fmt: skip


def assert_rows_equal(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape
    for row in range(len(LENGTHS)):
        assert ours[row].tolist() == expected[row].tolist(), row


def padded_logits(reference) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, positions, transformers' logits) of the padded batch, positions counted as
    transformers' generate counts them (cumsum(mask) - 1)."""
    import torch

    ids, mask = padded_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = reference(ids, attention_mask=mask, position_ids=positions).logits
    return ids.numpy(), mask.numpy(), positions.numpy(), logits.numpy()


def assert_close_where_real(actual: np.ndarray, expected: np.ndarray, mask: np.ndarray) -> None:
    """Logits (B, T, vocab) equal at every real (unpadded) position."""
    real = mask.astype(bool)
    np.testing.assert_allclose(actual[real], expected[real], rtol=1e-5, atol=1e-5)


# --- JAX ---------------------------------------------------------------------------------------


def test_jax_left_padded_greedy_batch_equals_transformers_row_by_row(reference, jax_model):
    """Prompts of 5, 17 and 30 tokens, left padded, one row stopping early at eos (then pad):
    transformers' tokens row by row, with pad given and with pad None (the first eos id)."""
    package, params = jax_model
    ids, mask = padded_batch()
    eos = early_eos(reference[0], ids, mask)
    for pad in (1, None):
        ours = package.generate(
            params, ids.numpy(), NEW_TOKENS, attention_mask=mask.numpy(), eos_token_id=[eos],
            pad_token_id=pad,
        )  # fmt: skip
        assert_rows_equal(np.asarray(ours), theirs(reference[0], eos, pad))
    stopped = np.asarray(ours)[1, ids.shape[1] :].tolist()
    assert stopped.index(eos) < len(stopped) - 1


def test_jax_generation_ends_when_every_row_has_finished(reference, jax_model):
    package, params = jax_model
    ids, mask = padded_batch()
    first = np.asarray(
        package.generate(params, ids.numpy(), 1, attention_mask=mask.numpy(), eos_token_id=None)
    )[:, -1].tolist()
    expected = reference[0].generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
        eos_token_id=first, pad_token_id=0,
    ).numpy()  # fmt: skip
    ours = package.generate(
        params, ids.numpy(), NEW_TOKENS, attention_mask=mask.numpy(), eos_token_id=first,
        pad_token_id=0,
    )  # fmt: skip
    assert expected.shape == (3, ids.shape[1] + 1)
    np.testing.assert_array_equal(np.asarray(ours), expected)


def test_jax_chunk_on_a_non_empty_cache_equals_the_full_forward(reference, jax_model):
    """Several new tokens on top of 20 cached ones give transformers' logits of the whole
    sequence at those positions."""
    import torch

    package, params = jax_model
    ids = padded_batch()[0][2:]  # (1, 30), no padding
    with torch.no_grad():
        expected = reference[0](ids).logits[:, 20:].numpy()
    cache = package.init_cache(1, 30)
    _, cache = package.forward_cached(params, ids[:, :20].numpy(), cache, 0)
    actual, _ = package.forward_cached(params, ids[:, 20:].numpy(), cache, 20)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-5)


def test_jax_decode_equals_prefill_at_every_position_with_padding(reference, jax_model):
    """The padded batch prefilled whole, and decoded one token at a time after a 10-token
    prefill, give transformers' logits at every real position."""
    package, params = jax_model
    ids, mask, positions, expected = padded_logits(reference[0])
    full, _ = package.forward_cached(
        params, ids, package.init_cache(3, 30), 0, position_ids=positions, key_mask=mask
    )
    assert_close_where_real(np.asarray(full), expected, mask)
    steps, cache = [], package.init_cache(3, 30)
    forward_cached = jax.jit(package.forward_cached)  # compiled once for (3, 10), once for (3, 1)
    for start, end in [(0, 10), *((t, t + 1) for t in range(10, 30))]:
        window = slice(start, end)
        logits, cache = forward_cached(
            params, ids[:, window], cache, start, position_ids=positions[:, window], key_mask=mask
        )
        steps.append(np.asarray(logits))
    assert_close_where_real(np.concatenate(steps, axis=1), expected, mask)


def test_jax_top_k_1_sampling_equals_greedy(jax_model):
    package, params = jax_model
    ids, mask = (t.numpy() for t in padded_batch())
    greedy = package.generate(params, ids, NEW_TOKENS, attention_mask=mask, eos_token_id=None)
    sampled = package.generate(
        params, ids, NEW_TOKENS, temperature=1.5, top_k=1, key=jax.random.key(0),
        attention_mask=mask, eos_token_id=None,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(sampled), np.asarray(greedy))


def test_jax_sampling_is_reproducible_with_a_key(jax_model):
    package, params = jax_model
    ids, mask = (t.numpy() for t in padded_batch())

    def run(seed: int) -> np.ndarray:
        return np.asarray(
            package.generate(
                params,
                ids,
                8,
                temperature=1.0,
                top_p=0.9,
                key=jax.random.key(seed),
                attention_mask=mask,
                eos_token_id=None,
            )
        )

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def allowed_by_transformers(logits: np.ndarray, temperature, top_k, top_p) -> set[int]:
    """The tokens transformers' temperature, top-k and top-p warpers leave finite."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.from_numpy(logits)[None]
    for warper in (
        TemperatureLogitsWarper(temperature),
        TopKLogitsWarper(top_k) if top_k is not None else None,
        TopPLogitsWarper(top_p) if top_p is not None else None,
    ):
        if warper is not None:
            scores = warper(None, scores)
    return set(np.flatnonzero(np.isfinite(scores[0].numpy())).tolist())


@settings(max_examples=25, deadline=None)
@given(
    logits=st.lists(
        st.floats(-8, 8, allow_nan=False, width=32), min_size=2, max_size=40, unique=True
    ),
    temperature=st.sampled_from([0.5, 1.0, 2.0]),
    top_k=st.one_of(st.none(), st.integers(1, 6)),
    top_p=st.one_of(st.none(), st.floats(0.05, 0.95)),
    seed=st.integers(0, 2**16),
)
def test_jax_samples_never_leave_the_top_k_top_p_set(
    jax_model, logits, temperature, top_k, top_p, seed
):
    """256 draws (one row each) fall inside the set transformers' warpers keep."""
    package, _ = jax_model
    sample = package.model.sample
    row = np.asarray(logits, np.float32)
    allowed = allowed_by_transformers(row, temperature, top_k, top_p)
    drawn = sample(
        jax.numpy.asarray(np.tile(row, (256, 1))), temperature, top_k, jax.random.key(seed), top_p
    )
    assert set(np.asarray(drawn).tolist()) <= allowed


# --- ONNX --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(reference, tmp_path_factory):
    """(the emitted run.py module, a model_with_past.onnx session bound to the reference's
    folder by reference)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx")
    folder = build_target(SPEC, "onnx", out, BuildOptions(weights=reference[1]))
    run = import_file(folder / "run.py")
    return run, run.load_session("model_with_past.onnx", reference[1])


def test_onnx_left_padded_greedy_batch_equals_transformers_row_by_row(reference, onnx_model):
    """run.py's generate on the padded batch: transformers' tokens row by row, the row that
    stops early at eos included, with pad given and pad None (the first eos id)."""
    run, session = onnx_model
    ids, mask = padded_batch()
    eos = early_eos(reference[0], ids, mask)
    for pad in (1, None):
        ours = run.generate(
            session, ids.numpy(), NEW_TOKENS, attention_mask=mask.numpy(), eos_token_id=[eos],
            pad_token_id=pad,
        )  # fmt: skip
        assert_rows_equal(ours, theirs(reference[0], eos, pad))
    stopped = ours[1, ids.shape[1] :].tolist()
    assert stopped.index(eos) < len(stopped) - 1


def test_onnx_generation_ends_when_every_row_has_finished(reference, onnx_model):
    run, session = onnx_model
    ids, mask = padded_batch()
    first = run.generate(session, ids.numpy(), 1, attention_mask=mask.numpy(), eos_token_id=None)
    first = first[:, -1].tolist()
    expected = reference[0].generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
        eos_token_id=first, pad_token_id=0,
    ).numpy()  # fmt: skip
    ours = run.generate(
        session, ids.numpy(), NEW_TOKENS, attention_mask=mask.numpy(), eos_token_id=first,
        pad_token_id=0,
    )  # fmt: skip
    assert expected.shape == (3, ids.shape[1] + 1)
    np.testing.assert_array_equal(ours, expected)


def test_onnx_chunk_on_a_non_empty_cache_equals_the_full_forward(reference, onnx_model):
    """10 new tokens fed at once on top of 20 cached ones (past_key_values), with the graph's
    attention_mask and position_ids: transformers' logits of the whole sequence there."""
    import torch

    run, session = onnx_model
    ids = padded_batch()[0][2:].numpy()  # (1, 30), no padding
    with torch.no_grad():
        expected = reference[0](torch.from_numpy(ids)).logits[:, 20:].numpy()
    names = [output.name for output in session.get_outputs()]
    mask, positions = np.ones_like(ids), np.arange(30)[None]
    _, *present = session.run(
        names, run.feeds(ids[:, :20], mask[:, :20], positions[:, :20], run.empty_cache(1))
    )
    past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], present)}
    actual = session.run(["logits"], run.feeds(ids[:, 20:], mask, positions[:, 20:], past))[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_onnx_decode_equals_prefill_at_every_position_with_padding(reference, onnx_model):
    """model_with_past.onnx on the padded batch, whole and one token at a time after a 10-token
    prefill: transformers' logits at every real position."""
    run, session = onnx_model
    ids, mask, positions, expected = padded_logits(reference[0])
    names = [output.name for output in session.get_outputs()]
    full = session.run(["logits"], run.feeds(ids, mask, positions, run.empty_cache(3)))[0]
    assert_close_where_real(full, expected, mask)
    steps, past = [], run.empty_cache(3)
    for start, end in [(0, 10), *((t, t + 1) for t in range(10, 30))]:
        feeds = run.feeds(ids[:, start:end], mask[:, :end], positions[:, start:end], past)
        logits, *present = session.run(names, feeds)
        past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], present)}
        steps.append(logits)
    assert_close_where_real(np.concatenate(steps, axis=1), expected, mask)


GENAI_PAD = 1  # genai_config.json's pad_token_id in the genai tests


@pytest.fixture(scope="module")
def genai(reference, tmp_path_factory):
    """(onnxruntime_genai, its Model of the folder, the eos id): the spec's eos is the token that
    stops the middle row early, its pad GENAI_PAD; weights in the folder (genai resolves external
    data beside the graphs only)."""
    og = pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai installed")
    ids, mask = padded_batch()
    eos = early_eos(reference[0], ids, mask)
    spec = SPEC.model_copy(update={"eos_token_id": (eos,), "pad_token_id": GENAI_PAD})
    options = BuildOptions(weights=reference[1], embed_weights=True)  # self-contained folder
    folder = build_target(spec, "onnx", tmp_path_factory.mktemp("genai"), options)
    return og, og.Model(str(folder)), eos


def genai_generator(genai, batch: np.ndarray, max_length: int):
    """onnxruntime-genai's Generator with the prompts `batch` (B, T) appended, greedy search
    from genai_config.json."""
    og, model, _ = genai
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, batch_size=len(batch))
    generator = og.Generator(model, params)
    generator.append_tokens(batch.astype(np.int32))
    return generator


def genai_sequences(genai, batch: np.ndarray, max_length: int) -> list[list[int]]:
    """Each row's sequence after onnxruntime-genai's own loop: prompt, then new tokens."""
    generator = genai_generator(genai, batch, max_length)
    while not generator.is_done():
        generator.generate_next_token()
    return [[int(t) for t in generator.get_sequence(row)] for row in range(len(batch))]


def right_padded(ids: np.ndarray, mask: np.ndarray, pad: int) -> np.ndarray:
    """The left-padded batch (B, W) with each prompt moved to the front and pad after it."""
    out = np.full_like(ids, pad)
    for row in range(len(ids)):
        prompt = ids[row][mask[row].astype(bool)]
        out[row, : len(prompt)] = prompt
    return out


def test_onnxruntime_genai_generates_transformers_tokens_for_a_padded_batch(reference, genai):
    """onnxruntime-genai's own loop on the folder and its genai_config.json, given the batch of
    prompts of 5, 17 and 30 tokens in one call, right-padded with pad_token_id (the padding it
    reads, onnxruntime-genai #1694): each row's new tokens are transformers' generate on the
    left-padded batch, the middle row stopping at eos and then emitting pad, as transformers'."""
    ids, mask = (t.numpy() for t in padded_batch())
    eos, width = genai[2], ids.shape[1]
    expected = theirs(reference[0], eos, GENAI_PAD)  # (3, width + NEW_TOKENS)
    batch = right_padded(ids, mask, GENAI_PAD)
    sequences = genai_sequences(genai, batch, width + NEW_TOKENS)
    for row in range(len(LENGTHS)):
        assert sequences[row][:width] == batch[row].tolist(), row  # the prompt as given
        assert sequences[row][width:] == expected[row, width:].tolist(), row
    stopped = sequences[1][width:]
    assert stopped.index(eos) < len(stopped) - 1 and stopped[-1] == GENAI_PAD


def test_onnxruntime_genai_generates_transformers_tokens_for_each_prompt_alone(reference, genai):
    """The same prompts fed one at a time (batch 1: no padding): transformers' greedy tokens,
    the middle prompt stopping at eos."""
    ids = padded_batch()[0]
    eos = genai[2]
    expected = theirs(reference[0], eos, GENAI_PAD)
    for row, length in enumerate(LENGTHS):
        prompt = ids[row : row + 1, -length:].numpy()
        tokens = genai_sequences(genai, prompt, length + NEW_TOKENS)[0]
        wanted = expected[row, ids.shape[1] - length :].tolist()
        if eos in wanted[length:]:  # transformers emits eos, then pads; genai's sequence stops
            wanted = wanted[: wanted.index(eos, length)]  # before it (0.18 leaves eos out)
        assert tokens == wanted, row
    assert len(tokens) == LENGTHS[-1] + NEW_TOKENS  # the last row runs to the end


def test_onnxruntime_genai_reads_left_padding_as_tokens(genai):
    """Why the emitted README says to right-pad a batch for onnxruntime-genai: it masks only the
    trailing pad ids of each row (#1694), so a left-padded row's padding is attended to, at
    positions counted from the padding's start. When a release reads left padding, this fails
    and the README's advice should change."""
    pad = GENAI_PAD
    batch = np.array([[pad, pad, pad, 7, 8], [9, 10, 11, 12, 13], [7, 8, pad, pad, pad]])
    generator = genai_generator(genai, batch, 8)
    mask = np.asarray(generator.get_input("attention_mask")).tolist()
    positions = np.asarray(generator.get_input("position_ids")).tolist()
    assert mask == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert positions == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 0, 0, 0]]


# --- bad arguments: one-line ValueErrors, the same in torch, JAX and ONNX (issue 17) -----------


@pytest.fixture(scope="module")
def torch_model(reference, tmp_path_factory):
    """The emitted torch Model, its weights loaded from the reference's folder."""
    package = import_package(build_target(SPEC, "torch", tmp_path_factory.mktemp("torch")))
    model = package.Model().eval()
    package.load_checkpoint(model, reference[1])
    return model


@pytest.fixture(params=["torch", "jax", "onnx"])
def generate(request):
    """One target's generate(ids, max_new_tokens, **options) on numpy arrays, numpy out."""
    if request.param == "torch":
        import torch

        model = request.getfixturevalue("torch_model")

        def run(ids, new, attention_mask=None, **options):
            mask = None if attention_mask is None else torch.from_numpy(attention_mask)
            return model.generate(
                torch.from_numpy(ids), new, attention_mask=mask, **options
            ).numpy()

    elif request.param == "jax":
        package, params = request.getfixturevalue("jax_model")

        def run(ids, new, **options):
            return np.asarray(package.generate(params, ids, new, **options))

    else:
        module, session = request.getfixturevalue("onnx_model")

        def run(ids, new, **options):
            return module.generate(session, ids, new, **options)

    return run


def one_prompt() -> np.ndarray:
    return padded_batch()[0][2:].numpy()  # (1, 30), no padding


@pytest.mark.parametrize(
    ("rows", "message"),
    [([[0, 0, 1, 1], [0, 0, 0, 0]], "attention_mask row 1 has no tokens"),
     ([[0, 1, 1, 1], [1, 1, 1, 0]], r"attention_mask row 1 is not left padding \(a 0 after a 1\): pad on the left"),
     ([[1, 0, 1, 1], [1, 1, 1, 1]], r"attention_mask row 0 is not left padding \(a 0 after a 1\): pad on the left"),
     ([[0, 2, 1, 1], [1, 1, 1, 1]], r"attention_mask must hold only 0 \(padding\) and 1 \(tokens\)")],
)  # fmt: skip
def test_a_mask_other_than_left_padding_is_a_one_line_error(generate, rows, message):
    """An empty row or right padding would be positioned as left padding, silently giving other
    tokens than transformers: refused, naming the row."""
    ids = np.full((2, 4), 5, dtype=np.int64)
    with pytest.raises(ValueError, match=f"^{message}$"):
        generate(ids, 2, attention_mask=np.array(rows, dtype=np.int64))


def test_negative_max_new_tokens_is_a_one_line_error_and_0_returns_the_prompt(generate):
    ids = one_prompt()
    with pytest.raises(ValueError, match=r"^max_new_tokens must be at least 0, got -1$"):
        generate(ids, -1)
    assert generate(ids, 0).tolist() == ids.tolist()


@pytest.mark.parametrize("bad", [-1, SPEC.vocab_size, SPEC.vocab_size + 7])
def test_an_input_id_outside_the_vocabulary_is_a_one_line_error_naming_it(generate, bad):
    ids = one_prompt()
    ids[0, 3] = bad
    vocabulary = rf"\[0, {SPEC.vocab_size}\)"
    with pytest.raises(
        ValueError, match=f"^input id {bad} is outside the vocabulary {vocabulary}$"
    ):
        generate(ids, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"top_k": 0}, "top_k must be at least 1, got 0"),
     ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
     ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
     ({"temperature": -1.0}, r"temperature must be at least 0, got -1.0")],
)  # fmt: skip
@pytest.mark.parametrize("target", ["torch", "jax"])
def test_bad_sampling_options_are_one_line_errors_in_torch_and_jax(
    request, target, options, message
):
    ids = one_prompt()
    options = {"temperature": 1.0} | options
    if target == "torch":
        import torch

        call = functools.partial(
            request.getfixturevalue("torch_model").generate, torch.from_numpy(ids)
        )
    else:
        package, params = request.getfixturevalue("jax_model")
        call = functools.partial(package.generate, params, ids, key=jax.random.key(0))
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(4, **options)


def test_a_numpy_integer_eos_is_one_id(reference, generate):
    """eos_token_id=np.int64(eos), as read from a numpy array: transformers' tokens, as for [eos]."""
    ids, mask = padded_batch()
    eos = early_eos(reference[0], ids, mask)
    ours = generate(
        ids.numpy(),
        NEW_TOKENS,
        attention_mask=mask.numpy(),
        eos_token_id=np.int64(eos),
        pad_token_id=1,
    )
    assert_rows_equal(ours, theirs(reference[0], eos, 1))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--ids", "1", "-2"], rf"--ids: input id -2 is outside the vocabulary \[0, {SPEC.vocab_size}\)"),
     (["--ids", "1", str(SPEC.vocab_size)], rf"--ids: input id {SPEC.vocab_size} is outside the vocabulary"),
     (["--ids", "1", "--max-new-tokens", "-1"], "--max-new-tokens must be at least 0, got -1")],
)  # fmt: skip
def test_run_py_refuses_bad_ids_and_max_new_tokens_in_one_line(
    reference, onnx_model, arguments, message
):
    run_py = onnx_model[0].__file__
    result = subprocess.run(
        [sys.executable, run_py, "--weights", str(reference[1]), *arguments],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(f"run.py: error: {message}.*\n", result.stderr), result.stderr
