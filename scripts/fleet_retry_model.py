"""A fast event model of `keyless-bench fleet`'s rollout, for choosing how throttled exchanges are
retried (docs/fleet.md, "Retries under throttling"): N pods started evenly over T seconds, each
exchanging once against a token bucket of Q calls per second (burst Q), 50 ms per call, Google's
and Entra's `Retry-After` (seconds until the bucket has a token again, at least 1) or AWS's none.
Only the first exchange of each pod is modelled (no refreshes, no caches): it reproduces the
simulation's rollout within about 1% (Google's answers: 74,263 throttled calls before issue 28,
73,895 here; 11,931 after, 11,944 here) in a second, where the simulation takes a minute.

    python3 scripts/fleet_retry_model.py [N Q T]
"""
import heapq
import math
import random
import sys


def simulate(delay, n=10000, q=50.0, t=60.0, retry_after=True, latency=0.05, seed=1):
    """Throttled calls and when the last pod got its credential; `delay(k, rng, retry_after)`
    is the wait after a pod's k-th throttle in a row."""
    rng = random.Random(seed)
    tokens, last, burst = q, 0.0, math.ceil(q)
    events = [(t * i / n, i, 0) for i in range(n)]
    heapq.heapify(events)
    throttled, ready = 0, 0.0
    while events:
        at, pod, throttles = heapq.heappop(events)
        at += latency
        tokens, last = min(burst, tokens + (at - last) * q), at
        if tokens >= 1:
            tokens -= 1
            ready = max(ready, at)
            continue
        throttled += 1
        answer = max(1.0, math.ceil((1 - tokens) / q)) if retry_after else 0.0
        heapq.heappush(events, (at + delay(throttles + 1, rng, answer), pod, throttles + 1))
    return throttled, ready


def before(k, rng, retry_after):
    """Before issue 28: Retry-After plus full jitter over 1 s doubling to 30 s."""
    return retry_after + rng.random() * min(30.0, 2.0 ** (k - 1))


def now(k, rng, retry_after, scale=60.0):
    """keyless-core's `throttled_delay` without a held credential."""
    low, high = (0.75, 1.5) if k == 1 else (0.5, 1.0)
    return max(retry_after, scale * low) + scale * (high - low) * rng.random()


def doubling(k, rng, retry_after):
    """A per-client adaptive rate reduces to this: halve the rate (double the wait) per throttle,
    from a request's time scale (1 s, equal jitter, up to 10 minutes)."""
    window = min(600.0, 2.0 ** (k - 1))
    return retry_after + window * (0.5 + 0.5 * rng.random())


def main(n=10000, q=50.0, t=60.0):
    unavoidable, floor = max(n - q * t, 1), n / q
    print(f"{n} pods over {t:g} s against {q:g}/s: {n - q * t:g} unavoidable, floor {floor:g} s")
    for name, delay in (("before issue 28", before), ("now", now), ("doubling from 1 s", doubling)):
        for cloud, retry_after in (("google/entra", True), ("aws", False)):
            throttled, ready = simulate(delay, n, q, t, retry_after)
            print(f"{name:18} {cloud:12} throttled {throttled:7} ({throttled / unavoidable:5.2f}x) "
                  f"ready {ready:6.0f} s ({ready / floor:.2f}x)")


if __name__ == "__main__":
    if len(sys.argv) > 3:
        main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
