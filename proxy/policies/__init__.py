"""Policies that wrap a provider call: caching, rate limits, retries, circuit breakers.

Each policy lives in its own module; import it from there (this package re-exports nothing):

- `proxy.policies.cache`: the exact-match response cache (key, cacheability, backends, stream replay).
- `proxy.policies.bucket`: the pure token-bucket arithmetic (clock passed in, no I/O).
- `proxy.policies.ratelimit`: async rate limiters (requests/min, tokens/min, concurrency) per provider or target.
- `proxy.policies.retry`: retry vs fallback per error kind, backoff, the per-request deadline.
- `proxy.policies.breaker`: the circuit breaker for one provider.
"""
