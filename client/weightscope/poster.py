"""Background, batched telemetry posting that never blocks or crashes training.

Records go into a bounded in-memory buffer (oldest dropped when full); one daemon thread posts them in batches with
exponential backoff. A slow, failing or absent server only produces a warning in the ``weightscope`` log. Retries are
safe because the server is idempotent by (run, step, layer).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .client import WeightscopeClient, WeightscopeError

log = logging.getLogger("weightscope")

# 4xx answers that may succeed on retry; any other 4xx means the batch itself is rejected
_RETRYABLE_4XX = {408, 409, 425, 429}


class TelemetryPoster:
    """Posts telemetry records for one run from a background thread.

    ``enqueue`` never blocks and never raises. ``flush``/``close`` wait at most their timeout.
    """

    def __init__(
        self,
        client: WeightscopeClient,
        run_id: str,
        *,
        batch_size: int = 512,
        max_buffer: int = 100_000,
        flush_interval: float = 2.0,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ):
        self.client = client
        self.run_id = run_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._buffer: deque[dict[str, Any]] = deque(maxlen=max_buffer)
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._failing = False
        self._flush_requested = False
        self.sent = 0
        self.dropped = 0
        self.rejected = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name=f"weightscope-poster-{run_id}", daemon=True)
        self._thread.start()
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    def enqueue(self, records: Iterable[dict[str, Any]]) -> None:
        """Add encoded records; when the buffer is full the oldest records are dropped (counted in ``dropped``)."""
        with self._cond:
            if self._closed:
                return
            before = self.dropped
            for record in records:
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped += 1
                self._buffer.append(record)
            if self.dropped > before and (before == 0 or self.dropped // 10_000 > before // 10_000):
                log.warning("weightscope: telemetry buffer full, %d records dropped so far", self.dropped)
            if len(self._buffer) >= self.batch_size:
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Records buffered or being posted."""
        with self._cond:
            return len(self._buffer) + self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Ask for an immediate post and wait until the buffer is empty; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._buffer or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def close(self, timeout: float = 10.0) -> bool:
        """Flush for at most ``timeout`` seconds, then stop the thread; what is still buffered is dropped."""
        if self._closed:
            return not self._buffer
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            if self._buffer:
                log.warning("weightscope: %d telemetry records not sent at close", len(self._buffer))
            self._cond.notify_all()
        self._thread.join(timeout=max(0.1, min(timeout, self.request_timeout)))
        atexit.unregister(self._atexit)
        return flushed

    def _take_batch(self) -> list[dict[str, Any]]:
        """Wait until a batch is due (full, interval passed, flush or close), then pop it. Called with no lock held."""
        with self._cond:
            deadline = time.monotonic() + self.flush_interval
            while not self._closed and not self._flush_requested and len(self._buffer) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self._buffer:
                    break
                self._cond.wait(remaining if remaining > 0 else self.flush_interval)
            if self._closed:
                return []
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            if not self._buffer:
                self._flush_requested = False
            self._in_flight = len(batch)
            return batch

    def _requeue(self, batch: list[dict[str, Any]]) -> None:
        """Put a failed batch back at the front, as far as the buffer bound allows (newer records win)."""
        with self._cond:
            room = self._buffer.maxlen - len(self._buffer)
            keep = batch[len(batch) - room:] if room < len(batch) else batch
            self.dropped += len(batch) - len(keep)
            self._buffer.extendleft(reversed(keep))
            self._in_flight = 0
            self._cond.notify_all()

    def _done(self) -> None:
        with self._cond:
            self._in_flight = 0
            self._cond.notify_all()

    def _loop(self) -> None:
        backoff = self.backoff_initial
        while True:
            batch = self._take_batch()
            if not batch:
                if self._closed:
                    return
                continue
            try:
                self.client.post_telemetry(self.run_id, batch, timeout=self.request_timeout)
            except WeightscopeError as exc:
                if exc.status < 500 and exc.status not in _RETRYABLE_4XX:
                    self.rejected += len(batch)
                    log.warning("weightscope: server rejected %d telemetry records: %s", len(batch), exc)
                    self._done()
                    continue
                self._on_failure(batch, exc)
            except Exception as exc:  # network errors, timeouts, anything: the thread must not die
                self._on_failure(batch, exc)
            else:
                self.sent += len(batch)
                if self._failing:
                    log.warning("weightscope: telemetry server reachable again")
                    self._failing = False
                backoff = self.backoff_initial
                self._done()
                continue
            with self._cond:  # back off; new records do not cut it short, a flush or close does
                deadline = time.monotonic() + backoff
                while not self._closed and not self._flush_requested:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            backoff = min(backoff * 2, self.backoff_max)

    def _on_failure(self, batch: list[dict[str, Any]], exc: BaseException) -> None:
        self.failures += 1
        if not self._failing:
            log.warning("weightscope: posting telemetry failed (%s: %s); will retry in the background",
                        type(exc).__name__, exc)
            self._failing = True
        self._requeue(batch)


def _closer(ref: weakref.ref) -> Callable[[], None]:
    """An exit handler giving a still-open poster two seconds to deliver (weak: it does not keep the poster alive)."""

    def close() -> None:
        poster = ref()
        if poster is not None:
            poster.close(timeout=2.0)

    return close
