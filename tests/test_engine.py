"""The continuous-batching engine against transformers' generate, one request at a time: requests of different
sizes and rules arriving at different steps, cancellation, limits, and the repetition guard."""

import numpy as np
import pytest

import reference

from paddle_got import GOTQwenForCausalLM
from paddle_got.engine import (
    CANCELLED,
    LENGTH,
    REPETITION,
    STOP,
    Engine,
    GenerationRequest,
)
from paddle_got.errors import EngineFull, RequestTooLarge
from paddle_got.kernels import decode_cpu
from paddle_got.modeling import kv_cache


@pytest.fixture(scope="module")
def model(ocr_checkpoint):
    return GOTQwenForCausalLM.from_pretrained(ocr_checkpoint.directory)


def endoftext(shape):
    return shape.vocab_size - reference.NUM_SPECIAL_TOKENS


def make_request(shape, tiles, before, after, seed, max_new_tokens, ngram=0, end_tokens=None, guard=False):
    pixels = reference.random_pixels(tiles, shape, seed) if tiles else None
    ids = reference.prompt_ids(tiles, shape, before, after, seed=seed)
    return GenerationRequest(ids, pixels, max_new_tokens, end_tokens or (endoftext(shape),), ngram, guard)


def expected_tokens(checkpoint, request):
    """The reference's greedy tokens for `request` alone (up to and including its first end token)."""
    batch = {
        "input_ids": np.asarray([request.prompt_ids]),
        "pixel_values": request.pixel_values,
        "attention_mask": np.ones((1, len(request.prompt_ids)), dtype=np.int64),
    }
    return reference.reference_generate(
        checkpoint.model,
        batch,
        request.max_new_tokens,
        request.no_repeat_ngram_size,
        request.end_token_ids,
        endoftext(checkpoint.shape),
    )[0]


@pytest.fixture(scope="module")
def requests(ocr_checkpoint):
    """Seven requests: 0-3 tiles, prompts of 2-13 text tokens, limits of 3-30 tokens, n-gram bans 0/3/20, and end
    tokens that some rows really produce (so rows stop at different steps)."""
    shape = ocr_checkpoint.shape
    specs = [
        (1, 9, 4, 31, 30, 0),
        (3, 2, 3, 32, 12, 3),
        (0, 13, 0, 33, 25, 20),
        (2, 5, 5, 34, 3, 0),
        (1, 4, 2, 35, 30, 20),
        (0, 6, 1, 36, 18, 0),
        (1, 2, 7, 37, 22, 3),
    ]
    built = [make_request(shape, *spec) for spec in specs]
    # A token request 0 produces at step 6 also ends requests 0, 4 and 6.
    stopper = expected_tokens(ocr_checkpoint, built[0])[5]
    for index in (0, 4, 6):
        built[index].end_token_ids = (stopper, endoftext(shape))
    return built


@pytest.fixture(params=["native", "paddle"])
def kernels(request, monkeypatch):
    """Our CPU decode kernels, or Paddle's ops (as on a GPU or a CPU without AVX2)."""
    if request.param == "paddle":
        monkeypatch.setattr(decode_cpu, "kernels_apply", lambda *arguments: False)
    return request.param


def test_arrivals_at_different_steps_equal_each_request_alone(model, requests, ocr_checkpoint, kernels, monkeypatch):
    monkeypatch.setattr(kv_cache, "GROWTH", 2)  # the caches grow every other step while rows come and go
    engine = Engine(model, max_rows=3)
    arrivals = {0: [0, 1], 2: [2, 3], 3: [4], 9: [5, 6]}  # step -> requests submitted before it
    handles, step = {}, 0
    while len(handles) < len(requests) or engine.scheduler.has_work():
        for index in arrivals.get(step, []):
            handles[index] = engine.submit(requests[index])
        engine.step()
        step += 1
        assert len(engine.scheduler.running) <= 3
    for index, request in enumerate(requests):
        expected = expected_tokens(ocr_checkpoint, request)
        assert handles[index].tokens == expected, index
        reason = STOP if expected[-1] in request.end_token_ids else LENGTH
        assert handles[index].finish_reason == reason, index
    assert {handles[i].finish_reason for i in handles} == {STOP, LENGTH}
    assert engine.runner.cache.rows == 0


def test_tokens_stream_as_they_are_made(model, requests, ocr_checkpoint):
    streamed, finished = [], []
    engine = Engine(model, max_rows=2)
    handle = engine.submit(requests[2], on_token=streamed.append, on_finish=finished.append)
    other = engine.submit(requests[1])
    engine.run_until_idle()
    expected = expected_tokens(ocr_checkpoint, requests[2])
    assert streamed == [t for t in expected if t not in requests[2].end_token_ids]
    assert finished == [handle] and other.tokens == expected_tokens(ocr_checkpoint, requests[1])


def test_cancelled_request_frees_its_row_for_the_next(model, requests, ocr_checkpoint):
    engine = Engine(model, max_rows=1)
    long = engine.submit(requests[4])
    waiting = engine.submit(requests[5])
    for _ in range(3):
        engine.step()  # the first step prefills (one token) and decodes (another)
    assert len(long.tokens) == 4 and not waiting.tokens
    long.cancel()
    engine.run_until_idle()
    assert long.finish_reason == CANCELLED and len(long.tokens) == 4
    assert waiting.tokens == expected_tokens(ocr_checkpoint, requests[5])


def test_cancelled_while_waiting_never_runs(model, requests):
    engine = Engine(model, max_rows=1)
    first, second = engine.submit(requests[3]), engine.submit(requests[5])
    second.cancel()
    engine.run_until_idle()
    assert first.finish_reason in (STOP, LENGTH) and second.finish_reason == CANCELLED and second.tokens == []


def test_full_queue_and_oversized_requests_are_refused(model, requests, ocr_checkpoint):
    engine = Engine(model, max_rows=1, max_waiting=1, max_cached_tokens=80)
    accepted = engine.submit(requests[3])
    with pytest.raises(EngineFull, match="already has 1 requests waiting"):
        engine.submit(requests[5])
    too_large = make_request(ocr_checkpoint.shape, 3, 2, 3, 40, 100)
    with pytest.raises(RequestTooLarge, match=r"needs \d+ cache positions"):
        engine.submit(too_large)
    engine.run_until_idle()
    assert accepted.tokens == expected_tokens(ocr_checkpoint, requests[3])


def test_cache_budget_holds_requests_back_until_there_is_room(model, requests, ocr_checkpoint):
    """Two requests that together exceed the budget run one after the other, each still exact."""
    pair = [requests[2], requests[5]]
    budget = max(len(r.prompt_ids) + r.max_new_tokens for r in pair)
    engine = Engine(model, max_rows=2, max_cached_tokens=budget)
    handles = [engine.submit(r) for r in pair]
    engine.step()
    assert len(engine.scheduler.running) == 1 and len(engine.scheduler.waiting) == 1
    engine.run_until_idle()
    for handle, request in zip(handles, pair):
        assert handle.tokens == expected_tokens(ocr_checkpoint, request)


def test_a_failing_request_does_not_stop_the_others(model, requests, ocr_checkpoint):
    two_tiles = np.concatenate([requests[0].pixel_values] * 2)  # the prompt has slots for one tile
    broken = GenerationRequest(requests[0].prompt_ids, two_tiles, 5, requests[0].end_token_ids)
    engine = Engine(model, max_rows=2)
    bad, good = engine.submit(broken), engine.submit(requests[2])
    engine.run_until_idle()
    assert bad.finish_reason == "error" and "image slots" in bad.error
    assert good.tokens == expected_tokens(ocr_checkpoint, requests[2])


def test_repetition_guard_ends_a_loop_the_reference_keeps_repeating(model, ocr_checkpoint):
    """Without the n-gram ban this tiny model falls into a loop; the guard stops there, keeping what came before."""
    shape = ocr_checkpoint.shape
    looping = None
    for seed in range(50, 80):
        request = make_request(shape, 1, 3, 2, seed, 200)
        unguarded = expected_tokens(ocr_checkpoint, request)
        if len(unguarded) == 200:
            looping = request
            break
    assert looping is not None, "no looping prompt found"
    plain = Engine(model).generate([looping])[0]
    assert plain.tokens == unguarded and plain.finish_reason == LENGTH  # off by default: the reference's result
    looping.repetition_guard = True
    streamed = []
    engine = Engine(model)
    guarded = engine.submit(looping, on_token=streamed.append)
    engine.run_until_idle()
    kept = len(guarded.tokens)
    assert guarded.finish_reason == REPETITION and 0 < kept < 200
    assert guarded.tokens == unguarded[:kept] and streamed == guarded.tokens
    # What was cut is the loop: the last kept block, repeated over at least max(2 x its length, 48) tokens.
    assert any(all(unguarded[i] == unguarded[i - p] for i in range(kept, kept + max(2 * p, 48))) for p in range(1, 65))
    assert not any(
        all(unguarded[i] == unguarded[i - p] for i in range(kept - 1, kept - 1 + max(2 * p, 48))) for p in range(1, 65)
    )  # and it is cut where it starts, not later


def test_fixed_batches_wait_for_the_whole_batch(model, requests, ocr_checkpoint):
    """The static-batching baseline: a freed row stays empty until the batch is done; results are the same."""
    engine = Engine(model, max_rows=2, fixed_batches=True)
    batch = (requests[3], requests[2], requests[5])  # 3 tokens, then longer ones
    handles = [engine.submit(r) for r in batch]
    engine.step()
    while not handles[0].finished:
        engine.step()
    assert len(engine.scheduler.running) == 1 and len(engine.scheduler.waiting) == 1
    engine.run_until_idle()
    for handle, request in zip(handles, batch):
        assert handle.tokens == expected_tokens(ocr_checkpoint, request)


def test_stats_count_the_work_done(model, requests):
    """Every request is prefilled once (its first token) and then takes one row of each decode step until it ends."""
    engine = Engine(model, max_rows=2)
    handles = [engine.submit(request) for request in (requests[1], requests[5])]
    engine.run_until_idle()
    stats = engine.stats()
    lengths = [len(handle.tokens) for handle in handles]
    assert min(lengths) > 1
    assert stats["prefills"] == 2
    assert stats["decode_steps"] == max(lengths) - 1
    assert stats["decode_rows"] == sum(lengths) - 2
    assert stats["prefill_seconds"] > 0 and stats["decode_seconds"] > 0
    assert (stats["running"], stats["waiting"]) == (0, 0)
