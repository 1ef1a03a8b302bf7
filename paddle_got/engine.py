"""Continuous batching: requests join the running batch as soon as a row is free and leave the moment they finish.

    engine = Engine(model, max_rows=8)
    handle = engine.submit(GenerationRequest(prompt_ids, pixel_values, max_new_tokens=4096, end_token_ids=(...)))
    engine.run_until_idle()            # or engine.start() to serve from a background thread
    handle.tokens, handle.finish_reason

Three parts, as in vLLM: the `Scheduler` decides which waiting requests may start (free rows, the cache budget, a
bounded queue); the `ModelRunner` runs the model (a newcomer's prefill alone, its image encoded once, then one
decode step for every running row over a `RowCache` in which each row keeps its own length and positions); the
`Engine` applies each request's rules (greedy choice, the n-gram ban, end tokens, the length limit, the repetition
guard) and hands every token to its request as it is made. A request's tokens are exactly those it would get alone.
"""

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from .errors import EngineFull, GOTError, RequestTooLarge
from .generation import NoRepeatNGram, RepetitionGuard
from .logger import logger
from .modeling.kv_cache import KVCache, RowCache

STOP, LENGTH, REPETITION, CANCELLED, ERROR = "stop", "length", "repetition", "cancelled", "error"


@dataclass
class GenerationRequest:
    """One sequence to generate: prompt ids, the float32 tiles `[T, 3, S, S]` of its images (or None), and its
    stop rules. Tokens come out greedily; `no_repeat_ngram_size` 0 is off; `repetition_guard` ends a loop early."""

    prompt_ids: Sequence[int]
    pixel_values: Optional[np.ndarray]
    max_new_tokens: int
    end_token_ids: Tuple[int, ...]
    no_repeat_ngram_size: int = 0
    repetition_guard: bool = False


class RequestHandle:
    """A submitted request: its tokens so far, how it finished, and a way to cancel it.

    `on_token(token)` is called (from the engine's thread) with each new token that is not an end token and can no
    longer be cut by the repetition guard; `on_finish(handle)` once at the end. `tokens` holds every new token,
    the end token included when one was made; `finish_reason` is stop, length, repetition, cancelled or error.
    """

    def __init__(
        self,
        request: GenerationRequest,
        on_token: Optional[Callable[[int], None]],
        on_finish: Optional[Callable[["RequestHandle"], None]],
    ):
        self.request = request
        self.tokens: List[int] = []
        self.finish_reason: Optional[str] = None
        self.error: Optional[str] = None
        self.prompt_tokens = len(request.prompt_ids)
        self._on_token = on_token
        self._on_finish = on_finish
        self._delivered = 0
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self.ngram = (
            NoRepeatNGram(request.no_repeat_ngram_size, request.prompt_ids)
            if request.no_repeat_ngram_size > 0
            else None
        )
        self.guard = RepetitionGuard() if request.repetition_guard else None

    @property
    def finished(self) -> bool:
        """Whether the request has ended (for any reason)."""
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop this request and free its row (at its next step)."""
        self._cancelled.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the request has finished; False if `timeout` seconds passed first."""
        return self._done.wait(timeout)

    def choose(self, logits: np.ndarray) -> int:
        """The next token from float32 logits `[vocab]`: greedy, the n-gram ban applied."""
        if self.ngram is not None:
            banned = list(self.ngram.banned())
            if banned:
                logits = logits.copy()
                logits[banned] = -np.inf
        return int(logits.argmax())

    def take(self, token: int) -> bool:
        """Record a new token; True when the request has finished with it."""
        self.tokens.append(token)
        if self.ngram is not None:
            self.ngram.push(token)
        if token in self.request.end_token_ids:
            self._finish(STOP)
        elif self.guard is not None and self.guard.push(token):
            del self.tokens[self.guard.keep :]
            self._finish(REPETITION)
        elif len(self.tokens) >= self.request.max_new_tokens:
            self._finish(LENGTH)
        else:
            self._deliver(len(self.tokens) - (self.guard.holdback if self.guard is not None else 0))
        return self.finished

    def _deliver(self, upto: int) -> None:
        upto = max(0, min(upto, len(self.tokens)))
        if self._on_token is not None and upto > self._delivered:
            for token in self.tokens[self._delivered : upto]:
                if token not in self.request.end_token_ids:
                    self._on_token(token)
        self._delivered = max(self._delivered, upto)

    def _finish(self, reason: str, error: Optional[str] = None) -> None:
        if self.finished:
            return
        self.finish_reason, self.error = reason, error
        if reason != ERROR:
            self._deliver(len(self.tokens))
        self._done.set()
        if self._on_finish is not None:
            self._on_finish(self)


class Scheduler:
    """Which requests run: a bounded first-come queue, at most `max_rows` running, and a cache budget.

    The budget counts, for every running request, its prompt plus `max_new_tokens` (what its row may grow to);
    None means no budget. `fixed_batches` admits only into an empty batch (static batching, for comparison): rows
    still leave as they finish, but nobody takes their place until the whole batch is done.
    """

    def __init__(self, max_rows: int, max_waiting: int, max_cached_tokens: Optional[int], fixed_batches: bool = False):
        self.fixed_batches = fixed_batches
        self.max_rows = max_rows
        self.max_waiting = max_waiting
        self.max_cached_tokens = max_cached_tokens
        self.waiting: Deque[RequestHandle] = deque()
        self.prefilling: List[RequestHandle] = []  # admitted, their prompt not yet run
        self.running: List[RequestHandle] = []  # in RowCache row order
        self.lock = threading.Lock()

    @staticmethod
    def reserved(handle: RequestHandle) -> int:
        """Cache positions a request may occupy: its prompt and every token it may make."""
        return handle.prompt_tokens + handle.request.max_new_tokens

    def add(self, handle: RequestHandle) -> None:
        """Queue a request; EngineFull when the queue is full, RequestTooLarge when it can never fit."""
        if self.max_cached_tokens is not None and self.reserved(handle) > self.max_cached_tokens:
            raise RequestTooLarge(
                f"The request needs {self.reserved(handle)} cache positions (prompt {handle.prompt_tokens} + "
                f"max_new_tokens {handle.request.max_new_tokens}), more than the engine's {self.max_cached_tokens}."
            )
        with self.lock:
            if len(self.waiting) >= self.max_waiting:
                raise EngineFull(f"The engine already has {self.max_waiting} requests waiting: try again later.")
            self.waiting.append(handle)

    def admit(self) -> List[RequestHandle]:
        """Take, in arrival order, the waiting requests that can start now (cancelled ones leave the queue)."""
        admitted = []
        with self.lock:
            if self.fixed_batches and self.running:
                return admitted
            budget_used = sum(self.reserved(h) for h in self.running)
            while self.waiting and len(self.running) + len(admitted) < self.max_rows:
                handle = self.waiting[0]
                if handle._cancelled.is_set():
                    self.waiting.popleft()._finish(CANCELLED)
                    continue
                if self.max_cached_tokens is not None and budget_used + self.reserved(handle) > self.max_cached_tokens:
                    break
                admitted.append(self.waiting.popleft())
                budget_used += self.reserved(handle)
            self.prefilling.extend(admitted)
        return admitted

    def has_work(self) -> bool:
        """Whether anything is running or waiting."""
        with self.lock:
            return bool(self.running or self.waiting or self.prefilling)


class ModelRunner:
    """Runs the model for the engine: one request's prefill, then decode steps for all running rows."""

    def __init__(self, model, max_rows: int):
        self.model = model
        self.cache = RowCache(model.config, max_rows)
        self.dtype = model.qwen2.compute_dtype

    def prefill(self, request: GenerationRequest) -> np.ndarray:
        """Encode the request's images once, run its prompt alone, give it the next row; its next-token logits."""
        image_features = None
        if request.pixel_values is not None:
            image_features = self.model.qwen2.encode_images(paddle.to_tensor(request.pixel_values).astype(self.dtype))
        cache = KVCache(self.model.config)
        ids = paddle.to_tensor(np.asarray([request.prompt_ids], dtype=np.int64))
        logits = self.model(ids, past_key_values=cache, image_features=image_features, last_logits_only=True).logits
        self.cache.add_row(cache)
        return logits[0, -1].numpy()

    def decode(self, tokens: Sequence[int]) -> np.ndarray:
        """One step for every running row (row i takes `tokens[i]`); next-token logits `[rows, vocab]`."""
        ids = paddle.to_tensor(np.asarray(tokens, dtype=np.int64)[:, None])
        return self.model(ids, past_key_values=self.cache, last_logits_only=True).logits[:, -1].numpy()

    def remove(self, row: int) -> Optional[int]:
        """Free a finished row (see `RowCache.remove_row`)."""
        return self.cache.remove_row(row)


class Engine:
    """Continuous batching over one model (see the module docstring). Thread-safe `submit`; `step` runs on one
    thread at a time, the caller's (`run_until_idle`) or the engine's own (`start`)."""

    def __init__(
        self,
        model,
        max_rows: int = 8,
        max_waiting: int = 256,
        max_cached_tokens: Optional[int] = None,
        fixed_batches: bool = False,
    ):
        if max_rows < 1:
            raise GOTError("The engine needs at least one row.")
        self.scheduler = Scheduler(max_rows, max_waiting, max_cached_tokens, fixed_batches)
        self.runner = ModelRunner(model, max_rows)
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._work = {"prefill_seconds": 0.0, "prefills": 0, "decode_seconds": 0.0, "decode_steps": 0, "decode_rows": 0}

    def submit(
        self,
        request: GenerationRequest,
        on_token: Optional[Callable[[int], None]] = None,
        on_finish: Optional[Callable[[RequestHandle], None]] = None,
    ) -> RequestHandle:
        """Queue a request (EngineFull / RequestTooLarge when it cannot be); returns its handle."""
        if request.max_new_tokens < 1:
            raise GOTError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}.")
        handle = RequestHandle(request, on_token, on_finish)
        self.scheduler.add(handle)
        with self._wake:
            self._wake.notify()
        return handle

    def step(self) -> None:
        """Admit and prefill newcomers, then one decode step for every row still running."""
        scheduler = self.scheduler
        for handle in scheduler.admit():
            started = time.perf_counter()
            try:
                with paddle.no_grad():
                    logits = self.runner.prefill(handle.request)
            except Exception as err:  # a bad request fails alone; the engine keeps serving the others
                logger.warning(f"A request failed in prefill: {err}")
                with scheduler.lock:
                    scheduler.prefilling.remove(handle)
                handle._finish(ERROR, f"The request could not be run: {err}")
                continue
            with scheduler.lock:
                scheduler.prefilling.remove(handle)
                scheduler.running.append(handle)
                self._count(prefill_seconds=time.perf_counter() - started, prefills=1)
            if handle.take(handle.choose(logits)):
                self._retire([len(scheduler.running) - 1])
        self._retire([row for row, h in enumerate(scheduler.running) if h._cancelled.is_set()], CANCELLED)
        if not scheduler.running:
            return
        started = time.perf_counter()
        try:
            with paddle.no_grad():
                logits = self.runner.decode([handle.tokens[-1] for handle in scheduler.running])
        except Exception as err:  # never leave the engine broken: the running requests fail, the queue goes on
            logger.warning(f"A decode step failed: {err}")
            rows = list(range(len(scheduler.running)))
            for row in rows:
                scheduler.running[row]._finish(ERROR, f"Generation failed: {err}")
            self._retire(rows)
            return
        with scheduler.lock:
            self._count(decode_seconds=time.perf_counter() - started, decode_steps=1, decode_rows=len(logits))
        finished = [row for row, handle in enumerate(scheduler.running) if handle.take(handle.choose(logits[row]))]
        self._retire(finished)

    def _retire(self, rows: List[int], reason: Optional[str] = None) -> None:
        """Free the rows of finished requests (`reason` finishes them first), keeping rows and requests aligned."""
        scheduler = self.scheduler
        for row in sorted(rows, reverse=True):
            handle = scheduler.running[row]
            if reason is not None:
                handle._finish(reason)
            moved = self.runner.remove(row)
            with scheduler.lock:
                if moved is not None:
                    scheduler.running[row] = scheduler.running[moved]
                scheduler.running.pop()

    def run_until_idle(self) -> None:
        """Step until nothing is running or waiting (the caller's thread does the work)."""
        while self.scheduler.has_work():
            self.step()

    def generate(self, requests: Sequence[GenerationRequest]) -> List[RequestHandle]:
        """Submit `requests` (the queue must hold them all) and run them to the end; their handles, in order."""
        handles = [self.submit(request) for request in requests]
        self.run_until_idle()
        return handles

    def start(self) -> None:
        """Run the engine on a background thread until `stop` (for servers)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="paddle_got-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread after its current step; requests still running are cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._retire(list(range(len(self.scheduler.running))), CANCELLED)
        with self.scheduler.lock:
            waiting = list(self.scheduler.waiting)
            self.scheduler.waiting.clear()
        for handle in waiting:
            handle._finish(CANCELLED)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.scheduler.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    def _count(self, **amounts) -> None:
        """Add to the work counters (the caller holds the scheduler's lock)."""
        for name, amount in amounts.items():
            self._work[name] += amount

    def stats(self) -> dict:
        """For metrics: `running` (prefilling included) and `waiting` counts now, and the work done so far:
        `prefills` and `prefill_seconds` (images encoded + prompts run), `decode_steps`, `decode_seconds` and
        `decode_rows` (rows summed over the steps, so `decode_rows / decode_steps` is the mean batch)."""
        with self.scheduler.lock:
            running = len(self.scheduler.running) + len(self.scheduler.prefilling)
            return {"running": running, "waiting": len(self.scheduler.waiting), **self._work}
