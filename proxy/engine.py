"""The engine: takes a normalized `ChatRequest`, serves it from the cache or walks the model's targets
(`proxy.dispatch`), and records the outcome. Fronts (MCP, HTTP, CLI) talk only to this.

    engine = Engine(Runtime.build(config))
    response = await engine.complete(request)              # ChatResponse with route, cached, cost, attempts
    stream = engine.stream(request)                        # async-iterate for StreamChunks; then stream.response

Rules kept here:
- the runtime is read once per request, so a reload (`swap`) never changes a request midway; the metrics and
  the cache belong to the engine and survive swaps;
- `defaults.max_tokens`/`temperature` fill what the request left out, before the cache key is computed;
- cache (DESIGN.md "Cache"): looked up only for cacheable requests (`cache.when`, a model's `cache.enabled`,
  the per-request bypass); a hit is marked `cached` and costs no attempt; concurrent identical cacheable requests
  share one upstream call; only complete, successful answers are stored, streamed ones included once they end
  cleanly. A cache backend that fails is logged and skipped, never failing the request; a client that goes away
  during the lookup, or while its answer is stored (a complete answer it has not got yet, a stream before its
  end), makes a cancelled request (below): a request is counted as a success only once its store is done;
- a request is counted once its attempt's rate-limit lease is released too: with limits kept in Redis that is a
  round trip (`Admitted.succeed`), and a client that goes away during it makes a cancelled request;
- streams have a commit point: until the first content chunk, failures are retried or fall back invisibly (the
  dispatch does it); after it, a failure ends the stream with `StreamInterrupted` carrying the partial text,
  counted as truncated, never cached and never a clean end;
- a client that goes away (its task cancelled, or the stream closed before its end) makes the request `cancelled`:
  counted apart from successes and failures (`Metrics.record_request(cancelled=True)`), logged with status
  `cancelled`, and the attempt in flight is abandoned, not recorded as an upstream error. A stream replayed from
  the cache is counted when its replay ends, so one its client leaves partway is cancelled too (its lookup still
  counts as a cache hit, but it is not a cached request).

Telemetry: every request ends with one info line (proxy/request_outcome.py: model, provider, status, latency,
tokens, cache) and one overhead sample (its time minus the time spent on upstreams, backoffs and rate limits; for a
stream, up to its first chunk). With traces on (`proxy.telemetry.active()`), the request span (the HTTP server span
itself, or a `proxy.request` span under the MCP SDK's `tools/call`) holds the dispatch's routing and attempt spans
(`proxy.spans`); with traces off, the request pays one `is None` check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from proxy.dispatch import Admitted, Dispatch
from proxy.errors import ProxyError, RequestError, StreamInterrupted
from proxy.metrics import UNKNOWN_LABEL, Metrics
from proxy.policies.cache import (
    ResponseAssembler,
    ResponseCache,
    build_cache,
    cache_key,
    is_cacheable,
    is_storable,
    replay_as_chunks,
)
from proxy.request_outcome import is_cancellation, note_failure, note_success, start_trace
from proxy.runtime import ModelPlan, PlannedTarget, Runtime
from proxy.spans import RequestTrace
from proxy.types import ChatRequest, ChatResponse, StreamChunk

log = logging.getLogger(__name__)


class _LeaderCancelled(Exception):
    """The request whose upstream call identical requests were sharing went away before an answer."""


class _OpenStream:
    """An upstream stream read up to its first content chunk (the commit point)."""

    __slots__ = ("buffered", "finished", "iterator")

    def __init__(self, iterator: AsyncIterator[StreamChunk], buffered: list[StreamChunk], finished: bool) -> None:
        self.iterator = iterator
        self.buffered = buffered
        self.finished = finished

    async def aclose(self) -> None:
        close = getattr(self.iterator, "aclose", None)
        if close is not None:
            await close()


async def _open_stream(target: PlannedTarget, request: ChatRequest) -> _OpenStream:
    assert target.bound is not None
    iterator = aiter(target.bound.stream(request))
    buffered: list[StreamChunk] = []
    opened = _OpenStream(iterator, buffered, False)
    try:
        while True:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                opened.finished = True
                return opened
            buffered.append(chunk)
            if chunk.is_content:
                return opened
    except BaseException:
        await opened.aclose()
        raise


async def _complete(target: PlannedTarget, request: ChatRequest) -> ChatResponse:
    assert target.bound is not None
    return await target.bound.complete(request)


class Engine:
    """Serves requests on the current runtime; owns the metrics and the response cache."""

    def __init__(self, runtime: Runtime, *, metrics: Metrics | None = None, cache: ResponseCache | None = None) -> None:
        self.runtime = runtime
        self.metrics = metrics or Metrics()
        if cache is None:
            cache = build_cache(runtime.config.cache, state=runtime.config.state, clock=runtime.clock)
        self.cache = cache
        self.loaded_at = datetime.now(UTC)
        self.reload_error: str | None = None  # the last rejected reload's problems (`file:line:col: ...`), if any
        self._inflight: dict[str, asyncio.Future[ChatResponse]] = {}

    # --- preparing ----------------------------------------------------------------------------------------

    @staticmethod
    def _with_defaults(request: ChatRequest, runtime: Runtime, *, stream: bool) -> ChatRequest:
        defaults = runtime.config.defaults
        changes: dict[str, Any] = {}
        if request.stream != stream:
            changes["stream"] = stream
        if request.max_tokens is None and defaults.max_tokens is not None:
            changes["max_tokens"] = defaults.max_tokens
        if request.temperature is None and defaults.temperature is not None:
            changes["temperature"] = defaults.temperature
        return dataclasses.replace(request, **changes) if changes else request

    def _cache_key(
        self, runtime: Runtime, plan: ModelPlan, request: ChatRequest, bypass: bool, template_version: str | None
    ) -> tuple[str | None, float]:
        """The cache key when this request may use the cache (else None), and the TTL to store with."""
        settings = runtime.config.cache
        when = settings.when
        if plan.model.cache.enabled is False:
            when = "never"
        elif plan.model.cache.enabled and when == "never":
            when = "deterministic"
        if not is_cacheable(request, when=when, bypass=bypass):
            return None, 0.0
        ttl = plan.model.cache.ttl if plan.model.cache.ttl is not None else settings.ttl
        return cache_key(request, plan.cache_scope, template_version=template_version), ttl

    async def _cache_get(
        self, key: str, route: str, started: float, runtime: Runtime, *, stream: bool
    ) -> ChatResponse | None:
        """The cached answer for `key`, or None (also when the backend fails). A request whose client goes away
        while it waits here (a Redis lookup takes a round trip, up to `state.timeout`) is counted as cancelled."""
        try:
            return await self.cache.get(key)
        except Exception as exc:  # a broken cache backend must not fail requests
            log.warning("response cache lookup failed, serving without it: %s", type(exc).__name__)
            return None
        except BaseException:  # cancelled: no dispatch will count this request, so it is counted here
            latency = runtime.clock() - started
            self.metrics.record_request(route, success=False, cancelled=True, latency_s=latency, stream=stream)
            raise

    async def _cache_set(self, key: str, response: ChatResponse, ttl: float) -> None:
        if not is_storable(response):
            return
        try:
            await self.cache.set(key, dataclasses.replace(response, attempts=(), cost=0.0), ttl)
        except Exception as exc:
            log.warning("response cache store failed: %s", type(exc).__name__)

    def _hit(
        self,
        hit: ChatResponse,
        route: str,
        started: float,
        runtime: Runtime,
        *,
        stream: bool,
        trace: RequestTrace | None = None,
        shared_wait: float | None = None,
        count: bool = True,
    ) -> ChatResponse:
        """A cache hit, or (`shared_wait`: the time spent waiting for it) an identical request's shared answer,
        counted as a successful request unless `count` is False (a replayed stream is counted when its replay ends:
        `_count_replay`)."""
        usage = hit.usage
        self.metrics.record_cache(True, (usage.input_tokens + usage.output_tokens) if usage else 0)
        latency = runtime.clock() - started
        if count:
            overhead = latency if shared_wait is None else max(0.0, latency - shared_wait)
            self.metrics.record_request(
                route, success=True, cached=True, latency_s=latency, stream=stream, overhead_s=overhead
            )
        if trace is not None:
            trace.cache_hit(shared=shared_wait is not None)
        return dataclasses.replace(
            hit,
            route=route,
            cached=True,
            cost=0.0,
            attempts=(),
            latency_ms=latency * 1000,
            config_version=runtime.config.version_hash,
        )

    def _count_replay(self, response: ChatResponse, now: float, started: float, error: BaseException | None) -> None:
        """A stream replayed from the cache (`response`, from `_hit`) ended: a cached success when the replay ran to
        its end (latency and overhead up to the hit, as counted before it was streamed), else (`error`) a cancelled
        request when its client went away partway, as a live stream's would be: not a cached one."""
        at_hit = response.latency_ms / 1000
        if error is None:
            self.metrics.record_request(
                response.route, success=True, cached=True, latency_s=at_hit, stream=True, overhead_s=at_hit
            )
        else:
            self.metrics.record_request(
                response.route,
                success=False,
                cancelled=is_cancellation(error),
                latency_s=now - started,
                stream=True,
                overhead_s=at_hit,
            )

    def _finish(
        self, response: ChatResponse, admitted: Admitted, dispatch: Dispatch, cost: float, started: float, now: float
    ) -> ChatResponse:
        """The answer as the client gets it: who answered, the route, cost, attempt history and total latency (to
        `now`, when it was answered)."""
        target = admitted.target
        return dataclasses.replace(
            response,
            provider=target.provider,
            model=response.model or target.model,
            route=dispatch.name,
            cost=cost,
            attempts=dispatch.attempts,
            latency_ms=(now - started) * 1000,
            config_version=dispatch.runtime.config.version_hash,
        )

    def _record(
        self,
        dispatch: Dispatch,
        started: float,
        *,
        success: bool,
        truncated: bool = False,
        until: float | None = None,
        cancelled: bool = False,
        now: float | None = None,
    ) -> None:
        """Count the request (`cancelled`: its client went away); its latency runs to `now` (default: the clock's
        now), its overhead to `until` (a stream's first chunk) or `now`."""
        if now is None:
            now = dispatch.runtime.clock()
        end = now if until is None else until
        self.metrics.record_request(
            dispatch.name,
            success=success,
            cancelled=cancelled,
            latency_s=now - started,
            stream=dispatch.stream,
            truncated=truncated,
            fallbacks=dispatch.fallbacks,
            retries=dispatch.retries,
            overhead_s=max(0.0, end - started - dispatch.upstream_s - dispatch.waited_s),
        )

    # --- complete -----------------------------------------------------------------------------------------

    async def complete(
        self, request: ChatRequest, *, bypass_cache: bool = False, template_version: str | None = None
    ) -> ChatResponse:
        """Answer `request` (non-streaming). Raises a `ProxyError` with a user-facing message when it cannot."""
        runtime = self.runtime
        started = runtime.clock()
        trace = start_trace(request, runtime, stream=False)
        try:
            request = self._with_defaults(request, runtime, stream=False)
            try:
                chain = runtime.resolve(request.model)
            except ProxyError:
                self.metrics.record_request(UNKNOWN_LABEL, success=False, latency_s=runtime.clock() - started)
                raise
            key, ttl = self._cache_key(runtime, chain[0], request, bypass_cache, template_version)
            if key is None:
                response = await self._dispatch(Dispatch(runtime, self.metrics, chain, request, trace), started)
            else:
                response = await self._cached(runtime, chain, request, started, trace, key, ttl)
        except BaseException as exc:
            note_failure(exc, request, runtime, started, trace, stream=False)
            raise
        note_success(response, trace, stream=False)
        return response

    async def _cached(
        self,
        runtime: Runtime,
        chain: list[ModelPlan],
        request: ChatRequest,
        started: float,
        trace: RequestTrace | None,
        key: str,
        ttl: float,
    ) -> ChatResponse:
        """A cacheable request: a hit, an identical request's answer (single flight), or our call, then stored."""
        route = chain[0].model.name
        hit = await self._cache_get(key, route, started, runtime, stream=False)
        if hit is not None:
            return self._hit(hit, route, started, runtime, stream=False, trace=trace)
        shared = self._inflight.get(key)
        if shared is not None:  # an identical request is in flight: share its answer (counted as a cache hit)
            waiting = runtime.clock()
            try:
                response = await asyncio.shield(shared)
            except _LeaderCancelled:  # its client went away; make our own call
                self.metrics.record_cache(False)
                return await self._dispatch(Dispatch(runtime, self.metrics, chain, request, trace), started)
            except BaseException as exc:  # the shared call failed, or our own client went away while waiting
                now = runtime.clock()
                overhead = max(0.0, waiting - started)
                self.metrics.record_request(
                    route, success=False, cancelled=is_cancellation(exc), latency_s=now - started, overhead_s=overhead
                )
                raise
            waited = runtime.clock() - waiting
            return self._hit(response, route, started, runtime, stream=False, trace=trace, shared_wait=waited)
        self.metrics.record_cache(False)
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        dispatch = Dispatch(runtime, self.metrics, chain, request, trace)
        try:
            response = await self._dispatch(dispatch, started, count=False)
            future.set_result(response)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, ProxyError) else _LeaderCancelled())
            future.exception()  # retrieved here, so an unawaited future does not warn
            raise
        finally:
            del self._inflight[key]
        answered = started + response.latency_ms / 1000
        try:
            await self._cache_set(key, response, ttl)
        except BaseException as exc:  # cancelled while the answer was stored: its client never got it
            self._record(dispatch, started, success=False, until=answered, cancelled=is_cancellation(exc))
            raise
        self._record(dispatch, started, success=True, now=answered)  # latency to its answer, as logged
        return response

    async def _dispatch(self, dispatch: Dispatch, started: float, *, count: bool = True) -> ChatResponse:
        """Run `dispatch` (non-streaming) to an answer, counted as a successful request unless `count` is False
        (the caller counts it with `_record(now=)` at the answer's time, once it is stored)."""
        try:
            response, admitted = await dispatch.run(_complete)
            cost = await admitted.succeed(response.usage, response=response)  # with Redis limits: a round trip
        except BaseException as exc:  # a failure, or its client went away (also while its lease was released)
            self._record(dispatch, started, success=False, cancelled=is_cancellation(exc))
            raise
        now = dispatch.runtime.clock()
        if count:
            self._record(dispatch, started, success=True, now=now)
        return self._finish(response, admitted, dispatch, cost, started, now)

    # --- stream -------------------------------------------------------------------------------------------

    def stream(
        self, request: ChatRequest, *, bypass_cache: bool = False, template_version: str | None = None
    ) -> EngineStream:
        """A stream of chunks for `request`; see `EngineStream`."""
        return EngineStream(self, request, bypass_cache, template_version)

    # --- status ---------------------------------------------------------------------------------------------

    def config_info(self) -> dict[str, Any]:
        config = self.runtime.config
        return {
            "version": config.version_hash,
            "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
            "path": str(config.path) if config.path else None,
            "last_reload_error": self.reload_error,
        }

    async def list_providers(self, include_metrics: bool = False) -> list[dict[str, Any]]:
        """One secret-free entry per configured provider (DESIGN.md "Public interface")."""
        runtime = self.runtime
        config = runtime.config
        entries = []
        for name, provider in config.providers.items():
            models = sorted({t.model for m in config.models.values() for t in m.targets if t.provider == name})
            limits = provider.limits
            entry: dict[str, Any] = {
                "name": name,
                "type": provider.type,
                "enabled": provider.enabled,
                "disabled_reason": provider.disabled_reason,
                "models": models,
                "limits": {
                    "requests_per_minute": limits.requests_per_minute,
                    "tokens_per_minute": limits.tokens_per_minute,
                    "concurrency": limits.concurrency,
                    "max_wait": limits.max_wait,
                    "headroom": await runtime.limiters[name].headroom(),
                },
                "breaker": runtime.provider_breaker_state(name),
            }
            if include_metrics:
                entry["metrics"] = self.metrics.snapshot(name)["provider_metrics"][name]
            entries.append(entry)
        return entries

    def metrics_snapshot(self, provider: str | None = None) -> dict[str, Any]:
        """The `get_metrics` JSON (DESIGN.md "Telemetry"), plus the cache backend's counters and the config."""
        providers = self.runtime.config.providers
        if provider is not None and provider not in providers and provider not in self.metrics.providers:
            known = ", ".join(f"`{name}`" for name in providers) or "(none)"
            raise RequestError(f"unknown provider `{provider}`; known providers: {known}", param="provider")
        snapshot = self.metrics.snapshot(provider, providers=providers)
        snapshot["cache"]["backend"] = self.cache.stats()
        snapshot["config"] = self.config_info()
        return snapshot

    def swap(self, runtime: Runtime) -> Runtime:
        """Serve new requests on `runtime`; returns the old one (in-flight requests finish on it; close it after).

        Metrics of providers whose settings changed or that were removed start fresh; the cache needs nothing
        (its keys carry each model's settings hash, so changed models simply miss)."""
        old, self.runtime = self.runtime, runtime
        for name in set(old.config.providers) - runtime.unchanged:
            self.metrics.reset_provider(name)
        self.loaded_at = datetime.now(UTC)
        return old

    async def aclose(self) -> None:
        await self.runtime.aclose()
        await self.cache.aclose()


class EngineStream:
    """One streamed request. Iterate it once for `StreamChunk`s; a failure raises a `ProxyError` from the loop.

    Once the first chunk is out, `provider` and `model` name the target that answers (`cached` for a cache hit);
    after a clean end `response` is the assembled `ChatResponse` (route, cost, attempts, usage). After the commit
    point an upstream failure raises `StreamInterrupted` whose `partial_text` is what the client already got.
    `aclose()` (or leaving the loop early) cancels the upstream call.
    """

    def __init__(self, engine: Engine, request: ChatRequest, bypass_cache: bool, template_version: str | None) -> None:
        self.provider: str | None = None
        self.model: str | None = None
        self.route: str | None = None
        self.cached = False
        self.response: ChatResponse | None = None
        self._generator = self._run(engine, request, bypass_cache, template_version)

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._generator

    async def aclose(self) -> None:
        await self._generator.aclose()

    async def _run(
        self, engine: Engine, request: ChatRequest, bypass_cache: bool, template_version: str | None
    ) -> AsyncIterator[StreamChunk]:
        runtime = engine.runtime
        metrics = engine.metrics
        started = runtime.clock()
        trace = start_trace(request, runtime, stream=True)
        truncated = False
        try:
            request = engine._with_defaults(request, runtime, stream=True)
            try:
                chain = runtime.resolve(request.model)
            except ProxyError:
                metrics.record_request(UNKNOWN_LABEL, success=False, stream=True, latency_s=runtime.clock() - started)
                raise
            self.route = chain[0].model.name
            key, ttl = engine._cache_key(runtime, chain[0], request, bypass_cache, template_version)
            if key is not None:
                hit = await engine._cache_get(key, self.route, started, runtime, stream=True)
                if hit is not None:
                    replayed = engine._hit(hit, self.route, started, runtime, stream=True, trace=trace, count=False)
                    self.response = replayed
                    self.cached, self.provider, self.model = True, hit.provider, hit.model
                    try:
                        for chunk in replay_as_chunks(hit):
                            yield chunk
                    except BaseException as exc:  # the client went away partway (a closed stream, cancellation)
                        engine._count_replay(replayed, runtime.clock(), started, exc)
                        raise
                    engine._count_replay(replayed, runtime.clock(), started, None)
                    note_success(replayed, trace, stream=True)
                    return
                metrics.record_cache(False)
            dispatch = Dispatch(runtime, metrics, chain, request, trace)
            try:
                opened, admitted = await dispatch.run(_open_stream)
            except BaseException as exc:
                engine._record(dispatch, started, success=False, cancelled=is_cancellation(exc))
                raise
            first_token_at = runtime.clock()
            self.provider, self.model = admitted.target.provider, admitted.target.model
            assembler = ResponseAssembler()
            try:
                for chunk in opened.buffered:
                    assembler.add(chunk)
                    yield chunk
                if not opened.finished:
                    async for chunk in opened.iterator:
                        assembler.add(chunk)
                        yield chunk
            except ProxyError as exc:
                # counted first: the cleanup awaits (with Redis limits, a round trip), and its client may go away
                engine._record(dispatch, started, success=False, truncated=True, until=first_token_at)
                truncated = True
                await opened.aclose()
                await admitted.fail(exc)
                partial = assembler.response().text or ""
                error = StreamInterrupted(
                    f"the stream from `{admitted.target.label}` broke after {len(partial)} characters of output: {exc}",
                    provider=admitted.target.provider,
                    partial_text=partial,
                )
                error.attempts = dispatch.attempts  # type: ignore[attr-defined]
                raise error from exc
            except BaseException as exc:  # the client went away (GeneratorExit, cancellation), or a bug
                # counted first: the cleanup awaits, and a cancel scope (anyio: the MCP SDK's) cancels it again
                engine._record(dispatch, started, success=False, until=first_token_at, cancelled=is_cancellation(exc))
                await opened.aclose()
                await admitted.abandon()
                raise
            response = assembler.response(provider=admitted.target.provider, model=admitted.target.model)
            try:
                cost = await admitted.succeed(response.usage, first_token_at=first_token_at, response=response)
                now = runtime.clock()
                self.response = engine._finish(response, admitted, dispatch, cost, started, now)
                if key is not None:
                    await engine._cache_set(key, self.response, ttl)
            except BaseException as exc:  # cancelled while its lease was released or its answer stored: no end yet
                engine._record(dispatch, started, success=False, until=first_token_at, cancelled=is_cancellation(exc))
                raise
            engine._record(dispatch, started, success=True, until=first_token_at, now=now)
        except BaseException as exc:
            note_failure(exc, request, runtime, started, trace, stream=True, truncated=truncated)
            raise
        note_success(self.response, trace, stream=True)
