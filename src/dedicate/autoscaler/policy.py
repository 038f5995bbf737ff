"""The autoscaling policy: how many replicas an endpoint should have, and why.

Pure: what the gateway and the engines see in, a decision out; no clock, no
I/O. Its memory (``PolicyState``) goes in and comes out with every call and is
persisted by the caller as JSON, so a restart of the control plane loses
nothing (Ray Serve's lesson).

The rules, for one endpoint:

1. **Demand.** ``load`` = requests in flight at its replicas + requests the
   gateway holds for it (no replica free yet), at the busiest moment since the
   gateways' previous report (they count it between reports, so a burst that
   comes and goes between two samples is not missed). The recommendation is
   ``ceil(load / target_concurrency)``: as many replicas as keep each at or
   under its target. Where the engines report their own state they can only
   raise it: requests waiting inside an engine for a generation slot mean
   the replicas are full whatever the target says (``ready + ceil(waiting /
   target)``), and a KV cache fuller than ``kv_cache_target`` asks for
   ``ceil(ready x usage / kv_cache_target)``.
2. **Up fast.** A recommendation above the current desired count is applied
   at once (the next pass, a few seconds).
3. **Down slowly, never flapping.** The desired count never drops below the
   highest recommendation of the last ``stabilisation_s`` (5 minutes by
   default): it follows the busiest moment of the window, so a load that
   oscillates faster than the window is served by one steady count. A
   desired count set by someone else (a manual scale) counts as a
   recommendation, so it too is held for one window.
4. **Zero.** With ``min_replicas`` 0 and no traffic for a whole window the
   recommendation is 0: the endpoint keeps running with no replica; the
   first request held by the gateway makes the recommendation 1 again.
5. **Bounds.** Every answer is clamped to ``[min_replicas, max_replicas]``;
   bounds changed by the user apply on the next pass.

A deployment's v2 scaling rules (``domain/scaling.py``) tune these:

6. **The up window** (``up_window_s``, 0 by default: at once) holds an increase
   until the load has asked for it that long: the count rises to the smallest
   recommendation of the window, so a burst shorter than the window moves
   nothing. **The down window** is ``stabilisation_s``. **The zero window**
   (``zero_window_s``, the down window by default) is how long a deployment with
   ``min_replicas`` 0 must see no request before it has no replica; until then
   it keeps one.
7. **A metric** besides requests in flight can only ask for more: time to first
   token or end-to-end latency at a percentile over target asks for
   ``ceil(ready x latency / target)``, output tokens per second for
   ``ceil(tokens / target)``, and a KV-cache target replaces ``kv_cache_target``.
8. **Rates.** Each direction's policies cap how far the count may move from the
   count at the start of their period (``n`` replicas, or ``n`` % of it, rounded
   up, at least one); ``MAX`` takes the policy that allows the larger move,
   ``MIN`` the smaller, and ``DISABLED`` never moves that way.

The window is kept as a monotone queue of (time, recommendation) pairs, each
older than all after it and strictly larger: its first fresh entry is the
window's maximum, and it never holds more than ``max_replicas + 1`` entries.
Times are rounded up to ``bucket_s`` so that the state, and thus the
database row, changes at most once per bucket while the load is steady.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime

from dedicate.domain.scaling import Metric, RateRules, Select

STATE_VERSION = 1


@dataclass(frozen=True)
class Inputs:
    """What is known about one endpoint now."""

    desired: int  # the desired replica count as stored now
    in_flight: int = 0  # requests at its replicas (the gateways' count, summed)
    held: int = 0  # requests the gateways hold because no replica could take them
    ready: int = 0
    starting: int = 0
    engine_waiting: int | None = None  # requests waiting inside engines for a slot, where reported
    kv_cache_usage: float | None = None  # the fullest replica's KV cache, 0..1, where reported
    peak_load: int = 0  # the most in flight + held at once since the gateways' previous report
    latency_ms: float | None = None  # the metric's latency (ttft or e2e) at its percentile, recent minutes
    tokens_per_s: float | None = None  # output tokens per second, recent minutes

    @property
    def load(self) -> int:
        """The busiest moment the gateways saw since their previous report, never less than now."""
        return max(self.in_flight + self.held, self.peak_load)


@dataclass(frozen=True)
class PolicyConfig:
    min_replicas: int
    max_replicas: int
    target_concurrency: float
    stabilisation_s: float = 300.0  # the down window
    kv_cache_target: float = 0.8
    bucket_s: float = 10.0
    up_window_s: float = 0.0  # an increase waits until the load has asked for it this long
    zero_window_s: float | None = None  # silence before no replica is left (None: the down window)
    up_rate: RateRules = field(default_factory=RateRules)  # how far the count may rise per period
    down_rate: RateRules = field(default_factory=RateRules)
    metric: Metric | None = None  # a metric that may ask for more than requests in flight do


@dataclass(frozen=True)
class LastDecision:
    at: float  # unix seconds
    before: int
    after: int
    why: str


@dataclass(frozen=True)
class PolicyState:
    window: tuple[tuple[float, int], ...] = ()  # (time rounded up to a bucket, recommendation)
    set_to: int | None = None  # the desired count this policy last decided
    last: LastDecision | None = None
    up_window: tuple[tuple[float, int], ...] = ()  # the up window's recommendations, smallest first
    counts: tuple[tuple[float, int], ...] = ()  # (time, desired count from then), for the rate periods
    busy_at: float | None = None  # the last time the load asked for a replica

    def to_json(self) -> str:
        out: dict[str, object] = {
            "v": STATE_VERSION, "window": [[t, r] for t, r in self.window], "set_to": self.set_to,
            "last": None if self.last is None else
            {"at": self.last.at, "before": self.last.before, "after": self.last.after, "why": self.last.why},
        }
        if self.up_window:
            out["up"] = [[t, r] for t, r in self.up_window]
        if self.counts:
            out["counts"] = [[t, r] for t, r in self.counts]
        if self.busy_at is not None:
            out["busy_at"] = self.busy_at
        return json.dumps(out, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> PolicyState:
        """The state stored by ``to_json``; an empty or unreadable one starts afresh."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            if raw.get("v") != STATE_VERSION:
                return cls()
            window = tuple((float(t), int(r)) for t, r in raw.get("window", []))
            last = raw.get("last")
            busy = raw.get("busy_at")
            return cls(window, None if raw.get("set_to") is None else int(raw["set_to"]),
                       None if last is None else LastDecision(float(last["at"]), int(last["before"]),
                                                              int(last["after"]), str(last["why"])),
                       tuple((float(t), int(r)) for t, r in raw.get("up", [])),
                       tuple((float(t), int(r)) for t, r in raw.get("counts", [])),
                       None if busy is None else float(busy))
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    why: str


@dataclass(frozen=True)
class Decision:
    desired: int
    state: PolicyState
    explanation: str | None  # "3 → 5: in-flight 14 over target 3 per replica"; None when nothing changed


def _num(x: float) -> str:
    return f"{x:g}"


def recommend(i: Inputs, c: PolicyConfig) -> Recommendation:
    """Replicas the load asks for right now, before any window or bound."""
    target = c.target_concurrency
    per = f"target {_num(target)} per replica"
    if i.load <= 0:
        best = Recommendation(0, f"no request in flight ({per})")
    else:
        words = f"in-flight {i.in_flight}" + (f" and {i.held} held by the gateway" if i.held else "")
        if i.load > i.in_flight + i.held:
            words = f"{words}, {i.load} at the busiest since the last report,"
        best = Recommendation(math.ceil(i.load / target - 1e-9), f"{words} over {per}")
    if i.engine_waiting and i.ready > 0 and i.engine_waiting >= i.ready:
        # At least one waiting per ready replica: the engines are full, not merely unevenly loaded.
        n = i.ready + math.ceil(i.engine_waiting / target - 1e-9)
        if n > best.replicas:
            best = Recommendation(n, f"the engines of {i.ready} ready replica(s) hold {i.engine_waiting} "
                                     f"request(s) waiting for a generation slot ({per})")
    m = c.metric
    kv_target = m.target / 100 if m is not None and m.name == "token_utilization" else c.kv_cache_target
    if i.kv_cache_usage is not None and i.ready > 0 and i.kv_cache_usage > kv_target:
        n = math.ceil(i.ready * i.kv_cache_usage / kv_target - 1e-9)
        if n > best.replicas:
            best = Recommendation(n, f"KV cache {i.kv_cache_usage:.0%} full over target "
                                     f"{kv_target:.0%} on {i.ready} ready replica(s)")
    if m is not None and m.name in ("ttft", "e2e_latency") and i.latency_ms is not None and i.ready > 0 \
            and i.latency_ms > m.target:
        n = math.ceil(i.ready * i.latency_ms / m.target - 1e-9)
        if n > best.replicas:
            best = Recommendation(n, f"{m.name} p{m.percentile} {i.latency_ms:.0f} ms over target {_num(m.target)} ms "
                                     f"on {i.ready} ready replica(s)")
    if m is not None and m.name == "throughput_per_replica" and i.tokens_per_s is not None:
        n = math.ceil(i.tokens_per_s / m.target - 1e-9)
        if n > best.replicas:
            best = Recommendation(n, f"{i.tokens_per_s:.1f} output tokens/s over target {_num(m.target)} per "
                                     "replica")
    return best


def _push(window: tuple[tuple[float, int], ...], t: float, rec: int, horizon: float) -> tuple[tuple[float, int], ...]:
    kept = [(at, r) for at, r in window if at >= horizon]
    while kept and kept[-1][1] <= rec:
        kept.pop()
    kept.append((t, rec))
    return tuple(kept)


def _push_min(window: tuple[tuple[float, int], ...], t: float, rec: int,
              horizon: float) -> tuple[tuple[float, int], ...]:
    """The up window: entries strictly growing, so the first fresh one is the window's minimum."""
    kept = [(at, r) for at, r in window if at >= horizon]
    while kept and kept[-1][1] >= rec:
        kept.pop()
    kept.append((t, rec))
    return tuple(kept)


def _count_at(counts: tuple[tuple[float, int], ...], when: float, current: int) -> int:
    """The desired count in effect at ``when``; before the first record, the first record's."""
    found = counts[0][1] if counts else current
    for at, n in counts:
        if at > when:
            break
        found = n
    return found


def _rate_limited(wanted: int, current: int, rules: RateRules, counts: tuple[tuple[float, int], ...],
                  t: float, up: bool) -> tuple[int, str]:
    """``wanted`` as far as ``rules`` let the count move from ``current`` now, and why when they held it."""
    name = "scaleUp" if up else "scaleDown"
    if rules.select is Select.DISABLED:
        return current, f"{name} is disabled (selectPolicy)"
    if not rules.policies:
        return wanted, ""
    limits = []
    for p in rules.policies:
        start = _count_at(counts, t - p.period_s, current)
        step = p.allowed(start)
        limits.append(start + step if up else start - step)
    pick = max if (rules.select is Select.MAX) == up else min
    limit = pick(limits)
    if up and wanted > limit:
        return max(limit, current), f"{name} policies allow {max(limit, current)} now"
    if not up and wanted < limit:
        return min(limit, current), f"{name} policies allow {min(limit, current)} now"
    return wanted, ""


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def decide(inputs: Inputs, state: PolicyState, now: datetime, config: PolicyConfig) -> Decision:
    """The desired replica count for now, the state to keep, and why it changed (if it did)."""
    lo, hi = config.min_replicas, config.max_replicas
    t = now.timestamp()
    bucket = math.ceil(t / config.bucket_s) * config.bucket_s if config.bucket_s > 0 else t
    horizon = t - config.stabilisation_s
    current = inputs.desired
    rec = recommend(inputs, config)
    window = state.window
    if state.set_to is None or current != state.set_to:
        # Set by someone else (a manual scale, a restart without state): held for a window like
        # any recommendation, so it is never dropped at once.
        window = _push(window, bucket, current, horizon)
    window = _push(window, bucket, rec.replicas, horizon)
    held = window[0][1]  # the largest recommendation still inside the window
    up_window = state.up_window
    sustained = rec.replicas
    if config.up_window_s > 0:
        up_horizon = t - config.up_window_s
        if not up_window:
            up_window = _push_min(up_window, bucket, current, up_horizon)  # a fresh start waits a window too
        up_window = _push_min(up_window, bucket, rec.replicas, up_horizon)
        sustained = up_window[0][1]  # the smallest recommendation inside the up window
    # The last moment the load asked for a replica, to the bucket; a fresh state counts from now.
    busy_at = bucket if rec.replicas > 0 or (state.busy_at is None and state.set_to is None) else state.busy_at
    zero_window = config.stabilisation_s if config.zero_window_s is None else config.zero_window_s

    if rec.replicas > current:
        wanted = min(rec.replicas, max(sustained, current))  # held at current: the up window is not over
        why = rec.why if config.up_window_s <= 0 else \
            f"{rec.why}; {wanted} asked for through the up window of {_minutes(config.up_window_s)}"
    elif held < current:
        wanted = held
        if held == 0 and lo < current:
            quiet_s = t - busy_at if busy_at is not None else None
            if lo == 0 and quiet_s is not None and quiet_s < zero_window and current > 1:
                wanted, why = 1, (f"at most 1 needed in the last {_minutes(config.stabilisation_s)}; no traffic "
                                  f"for {_minutes(quiet_s)}, under the zero window of {_minutes(zero_window)}")
            elif lo == 0 and quiet_s is not None and quiet_s < zero_window:
                wanted, why = current, ""
            else:
                quiet = f"no traffic for {_minutes(max(config.stabilisation_s, zero_window if lo == 0 else 0))}"
                wanted = lo  # the bounds say where silence ends
                why = f"{quiet}; scaled to zero (the next request starts one)" if lo == 0 else \
                    f"{quiet}; down to min_replicas {lo}"
        elif held == 0:
            why = ""
        else:
            why = (f"at most {held} needed in the last {_minutes(config.stabilisation_s)} "
                   f"(now {rec.why})")
    else:
        wanted, why = current, ""
    counts = state.counts or ((t, current),)
    if state.set_to is not None and current != state.set_to:
        counts = (*counts, (t, current))  # set by someone else: the periods count from it
    if wanted != current:
        rules = config.up_rate if wanted > current else config.down_rate
        limited, because = _rate_limited(wanted, current, rules, counts, t, wanted > current)
        if limited != wanted:
            wanted = limited
            why = f"{why}; {because}" if limited != current else ""
    desired = min(max(wanted, lo), hi)
    if desired != wanted:
        capped = wanted > hi
        bound = f"max_replicas {hi}" if capped else f"min_replicas {lo}"
        why = f"{why}; held at {bound}" if why else \
            f"{'capped at' if capped else 'raised to'} {bound} (now {rec.why})"

    if desired != current:
        longest = max((p.period_s for r in (config.up_rate, config.down_rate) for p in r.policies), default=0)
        older = [c for c in counts if c[0] < t - longest]
        counts = (*older[-1:], *(c for c in counts if c[0] >= t - longest), (t, desired))
    new_state = replace(state, window=window, set_to=desired, up_window=up_window, counts=counts,
                        busy_at=busy_at)
    if desired == current:
        return Decision(desired, new_state, None)
    explanation = f"{current} → {desired}: {why}"
    return Decision(desired, replace(new_state, last=LastDecision(t, current, desired, explanation)), explanation)


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    value: float
    source: str  # "user" or "default"
    basis: str  # how a default was derived, in words

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "source": self.source, "basis": self.basis}
