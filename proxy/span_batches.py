"""The span processor in front of the OTLP/HTTP exporter: finished spans are encoded a chunk at a time (128) as soon as
that many are queued, and the encoded bytes go out as one export request per 2,048 spans, or when the schedule delay
has passed since the last one, or on `force_flush()` and `shutdown()`.

Why not the SDK's `BatchSpanProcessor`: it hands its exporter a whole batch once full, so the first of those spans
were made a thousand or more requests earlier and had left the CPU's caches by the time they were encoded. Measured
with bench/telemetry_ab.py: the exporter's thread spent 15.7 / 16.0 us per traced request with it, 13.5 / 13.2 with
encoding as spans come (sending unchanged: one request per 2,048 spans).

Settings as the SDK's batch processor reads them: `OTEL_BSP_SCHEDULE_DELAY` (ms, 5000), `OTEL_BSP_MAX_QUEUE_SIZE`
(spans waiting to be encoded; 8192 here; up to an export request's worth more are held encoded),
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (spans per export request at most; 2048 here). Smaller settings make the chunks
smaller (at most the batch size and half the queue). A full queue drops the new span and says so (a warning per 10 s
at most, with the count). Between chunks of one wake-up the worker pauses, so that it
does not hold the event loop's GIL for long (`pace`); `force_flush` and `shutdown` do not pause.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from proxy.otlp_encode import FastOTLPSpanExporter, encode_spans

__all__ = ["ENCODE_CHUNK", "EncodingSpanProcessor", "settings_from_env"]

log = logging.getLogger(__name__)
SCHEDULE_DELAY_MS = 5000
QUEUE_SIZE = 8192
SEND_SIZE = 2048
DROP_WARNING_EVERY = 10.0  # seconds between two "queue full" warnings
SHUTDOWN_WAIT = 30.0  # seconds shutdown waits for the worker (an export in flight), then for the lock
ENCODE_CHUNK = 128  # spans encoded per hold of the GIL by the worker
# After each chunk the worker sleeps ENCODE_PACE times as long as the chunk took (at most MAX_PAUSE), so the event
# loop runs undisturbed in between: with no pause, every system call the loop made while a batch was encoded let the
# worker take the GIL back for a whole chunk, and requests in flight waited for several chunks. Concatenated
# encoded chunks are one export request whose `resource_spans` are the chunks' (protobuf merges repeated fields).
ENCODE_PACE = 3.0
MAX_PAUSE = 0.005


def pace(took: float) -> None:
    """The pause after a chunk that took `took` seconds to encode (it also releases the GIL)."""
    time.sleep(min(MAX_PAUSE, took * ENCODE_PACE))


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive whole number; using %d", name, raw, default)
        return default
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The processor's settings from the `OTEL_BSP_*` variables (this module's defaults where unset or invalid)."""
    env = os.environ if env is None else env
    return {
        "schedule_delay_ms": _positive(env, "OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY_MS),
        "queue_size": _positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", QUEUE_SIZE),
        "send_size": _positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", SEND_SIZE),
    }


class EncodingSpanProcessor(SpanProcessor):
    """Finished, sampled spans to `exporter` (module docstring). `enqueue` is `on_end` minus the sampled check, for
    spans known to be sampled (proxy/otel_fast.py's)."""

    def __init__(
        self,
        exporter: FastOTLPSpanExporter,
        *,
        schedule_delay_ms: int = SCHEDULE_DELAY_MS,
        queue_size: int = QUEUE_SIZE,
        send_size: int = SEND_SIZE,
    ) -> None:
        self.exporter = exporter
        self.delay = schedule_delay_ms / 1000
        self.queue_size = queue_size
        self.send_size = send_size
        # Spans per encoded chunk, and how many queued wake the worker early: small settings make it smaller.
        self.chunk = max(1, min(ENCODE_CHUNK, send_size, queue_size // 2))
        self.dropped = 0
        self._warned_at = -DROP_WARNING_EVERY
        self._shutdown = False
        self._start()
        if hasattr(os, "register_at_fork"):  # a forked child starts its own worker (the parent's is not copied)
            ref = weakref.WeakMethod(self._start)
            os.register_at_fork(after_in_child=lambda: (method := ref()) and method())

    def _start(self) -> None:
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one encoder/sender at a time: the worker, force_flush, shutdown
        self._pending: list[bytes] = []  # encoded chunks not sent yet
        self._pending_spans = 0
        self._worker = threading.Thread(target=self._work, name="OtelSpanEncoder", daemon=True)
        self._worker.start()

    # --- the event loop's side --------------------------------------------------------------------------------

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.enqueue(span)

    def enqueue(self, span: ReadableSpan) -> None:
        queue = self._queue
        if self._shutdown or len(queue) >= self.queue_size:
            self._drop()
            return
        queue.append(span)
        if len(queue) >= self.chunk and not self._wake.is_set():
            self._wake.set()

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at >= DROP_WARNING_EVERY:
            self._warned_at = now
            why = "the processor is shut down" if self._shutdown else f"{self.queue_size} spans are waiting already"
            log.warning("span dropped (%d so far): %s", self.dropped, why)

    # --- the worker's side ------------------------------------------------------------------------------------

    def _work(self) -> None:
        next_send = time.monotonic() + self.delay
        while not self._shutdown:
            self._wake.wait(max(0.0, next_send - time.monotonic()))
            self._wake.clear()
            if self._shutdown:
                break
            due = time.monotonic() >= next_send
            try:
                with self._lock:
                    self._encode(everything=due, paced=True)
                    if due and self._pending:
                        self._send()
            except Exception:  # a bug here must not end the worker: spans would pile up unexported
                log.exception("span export worker")
            if due or not self._pending:
                next_send = time.monotonic() + self.delay

    def _encode(self, *, everything: bool, paced: bool = False) -> None:
        """Encode the queued spans, whole chunks only unless `everything` (pausing between chunks when `paced`);
        send each time `send_size` spans are pending, so that no export request holds more. Holds `_lock`."""
        queue, took = self._queue, 0.0
        while len(queue) >= self.chunk or (everything and queue):
            if took and paced:
                pace(took)
            began = time.perf_counter()
            size = min(self.chunk, self.send_size - self._pending_spans, len(queue))
            chunk = [queue.popleft() for _ in range(size)]
            try:
                self._pending.append(encode_spans(chunk))
                self._pending_spans += len(chunk)
            except Exception:
                log.exception("could not encode %d spans; exporting them the stock way", len(chunk))
                try:
                    self.exporter.export_stock(chunk)
                except Exception:
                    log.exception("the stock export of %d spans failed too", len(chunk))
            took = time.perf_counter() - began
            if self._pending_spans >= self.send_size:
                self._send()

    def _send(self) -> bool:
        data, count = b"".join(self._pending), self._pending_spans
        self._pending, self._pending_spans = [], 0
        try:
            return self.exporter.send(data, count)
        except Exception:  # the exporter's client should not raise; a bug there must not end the worker
            log.exception("span export failed")
            return False

    # --- flush and shutdown -----------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Encode and send everything finished so far, now (in the caller's thread); False when the processor is shut
        down, the worker held the lock past the timeout, or the send failed."""
        if self._shutdown or not self._lock.acquire(timeout=max(0.0, timeout_millis / 1000)):
            return False
        try:
            self._encode(everything=True)
            return self._send() if self._pending else True
        finally:
            self._lock.release()

    def shutdown(self) -> None:
        """Send what is left, stop the worker and shut the exporter down; spans ended afterwards are dropped."""
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join(timeout=SHUTDOWN_WAIT)
        if self._lock.acquire(timeout=SHUTDOWN_WAIT):
            try:
                self._encode(everything=True)
                if self._pending:
                    self._send()
            finally:
                self._lock.release()
        else:
            log.warning("span export worker still busy after %g s: %d spans not exported", SHUTDOWN_WAIT,
                        len(self._queue) + self._pending_spans)  # fmt: skip
        self.exporter.shutdown()
