"""The autoscaling loop and idle shutdown in the control plane: real store, real reconciler and
placement, fake runtime, a manual clock. Load arrives as the gateways report it: signal rows
written with ``Store.write_signals``."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dedicate.control.auth import Principal
from dedicate.control.autoscaling import Autoscaler
from dedicate.control.inputs import CreateEndpoint, EndpointPatch
from dedicate.control.reconciler import Reconciler
from dedicate.domain.errors import InvalidRequest
from dedicate.domain.models import TINY_CHAT
from dedicate.domain.records import EndpointSignals, Replica
from dedicate.engines.metrics import EngineSample, parse_engine_metrics
from dedicate.settings import ConfigError, load_settings
from dedicate.store.base import StaleLease
from tests.control.test_capacity import ADMIN, ALICE, BOB, h100_node
from tests.control.test_capacity import Fleet as CapacityFleet

WINDOW_S = 300


class Fleet(CapacityFleet):
    """The capacity tests' fleet on one node of H100 slots, with an autoscaler whose engines report
    what ``engines`` says."""

    def __init__(self, tmp_path: Path, gpus: int = 8, db_url: str | None = None) -> None:
        super().__init__(tmp_path, [h100_node(gpus=gpus)], db_url=db_url)
        self.engines: dict[str, EngineSample] = {}  # what each replica's /metrics says, by replica id
        self.auto = self.autoscaler()

    def autoscaler(self, rec: Reconciler | None = None) -> Autoscaler:
        r = rec or self.rec

        async def scrape(replica: Replica) -> EngineSample | None:
            return self.engines.get(replica.id)

        return Autoscaler(self.store, self.settings, self.clock, self.runtime.nodes,
                          leader=lambda: r.store if r.is_leader else None, wake=lambda: None, scrape=scrape)

    def create(self, who: Principal, min_r: int, max_r: int, **extra: Any) -> str:  # type: ignore[override]
        """One 1-GPU endpoint between the bounds (the capacity fleet's ``create`` takes a GPU count)."""
        auto = {"min_replicas": min_r, "max_replicas": max_r, **extra.pop("autoscaling", {})}
        body = {"model": TINY_CHAT, "hardware": "1x_nvidia_h100_80gb_sxm", "autoscaling": auto, **extra}
        return self.svc.create(who, CreateEndpoint.model_validate(body), dry_run=False).endpoint.id

    def load(self, endpoint_id: str, in_flight: int, queued: int = 0, gateway: str = "gw-1",
             last_request_at: datetime | None = None, peak: int = 0) -> None:
        """What a gateway process writes every 2 s."""
        now = self.clock.now()
        last = last_request_at if last_request_at is not None else (now if in_flight or queued else None)
        self.store.write_signals(gateway, now, [EndpointSignals(endpoint_id, in_flight, queued, 0, 0, 0, 0,
                                                                last, now, peak_load=peak)])

    def scale(self, auto: Autoscaler | None = None) -> None:
        asyncio.run((auto or self.auto).pass_once())

    def run_for(self, seconds: float, loads: dict[str, tuple[int, int]]) -> None:
        """Passes of 2 s: the gateways report ``loads`` (in flight, held), then scale, then reconcile."""
        end = self.clock.now() + timedelta(seconds=seconds)
        while self.clock.now() < end:
            for endpoint_id, (in_flight, held) in loads.items():
                self.load(endpoint_id, in_flight, held)
            self.scale()
            self.clock.advance(1)
            self.settle(1)

    def ep(self, endpoint_id: str) -> dict[str, Any]:
        view = self.svc.get(ADMIN, endpoint_id)
        e = view.endpoint
        return {"state": e.state.value, "desired": e.desired_replicas, "queued": e.queued_replicas,
                "running": sum(1 for r in view.replicas if r.facts.stop_requested_at is None),
                "intent": e.intent.value, "message": e.status_message, "view": view}

    def events(self, endpoint_id: str, kind: str) -> list[str]:
        return [ev.message for ev in self.store.events(endpoint_id) if ev.kind == kind]


# scaling up ----------------------------------------------------------------------------------------


def test_gateway_load_scales_up_at_the_next_pass_with_the_reason_as_an_event(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.load(e, 7)
    f.scale()
    assert f.ep(e)["desired"] == 4
    assert f.events(e, "scaled") == ["1 → 4: in-flight 7 over target 2 per replica"]
    f.settle()
    got = f.ep(e)
    assert got["running"] == 4 and got["state"] == "STARTED"
    last = got["view"].last_scaling
    assert last is not None and (last.before, last.after) == (1, 4), "the API shows the last decision"
    assert got["view"].target.value == 2 and got["view"].target.source == "user"


def test_a_burst_the_gateway_saw_between_two_writes_scales_up_though_it_is_over(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.load(e, 1, peak=7)
    f.scale()
    assert f.ep(e)["desired"] == 4
    assert f.events(e, "scaled") == ["1 → 4: in-flight 1, 7 at the busiest since the last report, "
                                     "over target 2 per replica"]


def test_the_signals_of_every_gateway_process_are_summed_and_stale_ones_ignored(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.load(e, 30, gateway="gw-dead")  # a gateway that stopped writing 20 s ago
    f.clock.advance(20)
    f.load(e, 3, gateway="gw-1")
    f.load(e, 4, gateway="gw-2")
    f.scale()
    assert f.events(e, "scaled") == ["1 → 4: in-flight 7 over target 2 per replica"]


def test_the_default_target_comes_from_the_engine(tmp_path: Path) -> None:
    f = Fleet(tmp_path)  # the transformers engine generates one request at a time
    e = f.create(ALICE, 1, 8)
    f.settle()
    f.load(e, 3)
    f.scale()
    assert f.ep(e)["desired"] == 3
    target = f.ep(e)["view"].target
    assert (target.value, target.source) == (1.0, "default") and "transformers" in target.basis


def test_engines_reporting_waiting_requests_ask_for_more_than_the_target_says(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 32})
    f.settle()
    (r,) = f.svc.replicas(ADMIN, e)
    f.engines[r.id] = parse_engine_metrics("# TYPE dedicate_engine_requests_waiting gauge\n"
                                           "dedicate_engine_requests_waiting 20\n")
    f.load(e, 24)
    f.scale()
    assert f.ep(e)["desired"] == 2
    assert "hold 20 request(s) waiting for a generation slot" in f.events(e, "scaled")[0]


def test_vllm_metrics_are_read_for_waiting_requests_and_kv_cache() -> None:
    page = ('# HELP vllm:num_requests_waiting x\nvllm:num_requests_waiting{model_name="m"} 3.0\n'
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.93\nvllm:num_requests_running{model_name="m"} 40\n')
    assert parse_engine_metrics(page) == EngineSample(3, 0.93)
    assert parse_engine_metrics("garbage\nvllm:num_requests_waiting nan-ish\n") == EngineSample(None, None)


# capacity ------------------------------------------------------------------------------------------


def test_a_scale_up_beyond_capacity_runs_what_fits_and_queues_the_rest_without_error(tmp_path: Path) -> None:
    f = Fleet(tmp_path, gpus=4)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.run_for(10, {e: (12, 0)})
    got = f.ep(e)
    assert (got["desired"], got["running"], got["queued"]) == (6, 4, 2)
    assert got["state"] == "STARTED"
    assert "4 of 6 replicas ready; 2 queued" in got["message"] and "availability limited" in got["message"]
    assert len(f.events(e, "scaled")) == 1, "no retries, no ratchet while the replicas wait for capacity"


def test_autoscaled_surplus_yields_to_another_endpoints_queued_minimum(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    rich = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 1})
    f.settle()
    f.run_for(10, {rich: (8, 0)})
    assert f.ep(rich)["running"] == 8
    head = f.create(BOB, 4, 4)
    f.run_for(20, {rich: (8, 0), head: (0, 0)})
    assert f.ep(head)["state"] == "STARTED" and f.ep(head)["running"] == 4
    got = f.ep(rich)
    assert (got["desired"], got["running"], got["queued"]) == (8, 4, 4), "its surplus yielded; still wanted"
    assert len(f.events(rich, "yielded")) == 4
    assert len(f.events(rich, "scaled")) == 1, "the autoscaler does not fight the queue"


# scaling down --------------------------------------------------------------------------------------


def test_after_the_load_goes_the_replicas_stay_one_window_then_go_in_one_step(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.run_for(10, {e: (10, 0)})
    assert f.ep(e)["running"] == 5
    f.run_for(WINDOW_S - 30, {e: (1, 0)})
    assert f.ep(e)["desired"] == 5, "held within the stabilisation window"
    f.run_for(60, {e: (1, 0)})
    got = f.ep(e)
    assert got["desired"] == 1 and got["running"] == 1
    assert f.events(e, "scaled")[-1].startswith("5 → 1: at most 1 needed in the last 5 min")


def test_a_restarted_autoscaler_keeps_the_window_it_stored(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 2})
    f.settle()
    f.run_for(10, {e: (10, 0)})
    f.run_for(60, {e: (0, 0)})
    f.auto = f.autoscaler()  # a new process: nothing in memory
    f.run_for(120, {e: (0, 0)})
    assert f.ep(e)["desired"] == 5
    f.run_for(WINDOW_S, {e: (0, 0)})
    assert f.ep(e)["desired"] == 1


# bounds ----------------------------------------------------------------------------------------------


def test_a_patch_of_the_bounds_applies_at_once_and_scaling_continues_within_them(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 1})
    f.settle()
    f.run_for(10, {e: (8, 0)})
    assert f.ep(e)["running"] == 8
    f.svc.update(ALICE, e, EndpointPatch.model_validate({"autoscaling": {"max_replicas": 3}}))
    assert f.ep(e)["desired"] == 3, "at once, before any autoscaling pass"
    f.run_for(10, {e: (8, 0)})
    assert (f.ep(e)["desired"], f.ep(e)["running"]) == (3, 3)
    f.svc.update(ALICE, e, EndpointPatch.model_validate({"autoscaling": {"max_replicas": 6}}))
    f.run_for(6, {e: (8, 0)})
    assert f.ep(e)["desired"] == 6, "the load still asks for 8; the new max allows 6"
    assert f.events(e, "scaled")[-1] == "3 → 6: in-flight 8 over target 1 per replica; held at max_replicas 6"


def test_target_concurrency_can_be_patched_and_reset_and_bad_values_are_refused(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8)
    f.svc.update(ALICE, e, EndpointPatch.model_validate({"autoscaling": {"target_concurrency": 4}}))
    assert f.ep(e)["view"].target.value == 4
    assert "target concurrency set to 4 per replica" in f.events(e, "updated")
    f.svc.update(ALICE, e, EndpointPatch.model_validate({"autoscaling": {"target_concurrency": None}}))
    assert f.ep(e)["view"].target.source == "default"
    with pytest.raises(InvalidRequest, match="target_concurrency"):
        f.svc.update(ALICE, e, EndpointPatch.model_validate({"autoscaling": {"target_concurrency": -2}}))
    with pytest.raises(InvalidRequest, match="target_concurrency"):
        f.create(ALICE, 1, 2, autoscaling={"target_concurrency": "lots"})


def test_fixed_bounds_are_left_alone(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 2, 2)
    f.settle()
    f.run_for(10, {e: (50, 0)})
    assert f.ep(e)["desired"] == 2 and f.events(e, "scaled") == []
    assert f.store.get_endpoint(e).autoscale_state is None  # type: ignore[union-attr]


# scale to zero ---------------------------------------------------------------------------------------


def test_min_zero_runs_started_with_no_replica_and_scales_from_zero_on_a_held_request(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 0, 2)
    f.settle()
    got = f.ep(e)
    assert (got["state"], got["desired"], got["running"]) == ("STARTED", 0, 0), "running, costing nothing"
    assert got["message"] == "scaled to zero: no replica runs and nothing is billed; the next request starts one"
    f.run_for(2, {e: (0, 1)})  # the gateway holds the first request
    got = f.ep(e)
    assert got["desired"] == 1 and got["running"] == 1 and got["state"] == "STARTED"
    assert f.events(e, "scaled") == ["0 → 1: in-flight 0 and 1 held by the gateway over target 1 per replica"]
    assert "state" not in [ev.kind for ev in f.store.events(e)][-3:], "no STARTED → STARTING flap"
    f.run_for(WINDOW_S + 20, {e: (0, 0)})
    got = f.ep(e)
    assert (got["state"], got["desired"], got["running"]) == ("STARTED", 0, 0)
    assert f.events(e, "scaled")[-1].startswith("1 → 0: no traffic for 5 min; scaled to zero")


def test_min_zero_still_refuses_hardware_this_installation_can_never_hold(tmp_path: Path) -> None:
    f = Fleet(tmp_path, gpus=1)
    from dedicate.domain.errors import HardwareUnavailable

    with pytest.raises(HardwareUnavailable):
        f.svc.create(ALICE, CreateEndpoint.model_validate({
            "model": TINY_CHAT, "hardware": "2x_nvidia_h100_80gb_sxm",
            "autoscaling": {"min_replicas": 0, "max_replicas": 1}}), dry_run=False)


# idle shutdown ---------------------------------------------------------------------------------------


def test_an_idle_endpoint_stops_with_the_reason_and_start_brings_it_back(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 2, inactive_timeout=1)
    f.settle()
    assert f.ep(e)["state"] == "STARTED"
    f.run_for(50, {e: (0, 0)})
    assert f.ep(e)["state"] == "STARTED"
    f.run_for(20, {e: (0, 0)})
    assert f.ep(e)["state"] in ("STOPPING", "STOPPED")
    (why,) = f.events(e, "idle")
    assert why.startswith("stopped: idle for 1 min (no request since it started at")
    f.settle()
    got = f.ep(e)
    assert (got["state"], got["intent"], got["running"]) == ("STOPPED", "stop", 0)
    kept = f.store.get_endpoint(e)
    assert kept is not None and kept.inactive_timeout == 1 and kept.max_replicas == 2, "name and config kept"
    f.svc.update(ALICE, kept.name, EndpointPatch(state="STARTED"))
    f.settle()
    assert f.ep(e)["state"] == "STARTED"
    f.run_for(30, {e: (0, 0)})
    assert f.ep(e)["state"] == "STARTED", "the idle clock starts again when it is STARTED again"


def test_requests_keep_it_running_and_the_last_one_survives_a_restart(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 1, inactive_timeout=2)
    f.settle()
    f.run_for(100, {e: (1, 0)})  # one request in flight all along: never idle
    f.run_for(30, {e: (0, 0)})   # the gateway still reports its last request time
    assert f.ep(e)["state"] == "STARTED"
    stored = f.store.get_endpoint(e)
    assert stored is not None and stored.last_request_at is not None, "persisted with every signal write"
    f.auto = f.autoscaler()
    f.clock.advance(60)  # a restart: the gateways have not written yet; the row remembers
    f.scale()
    assert f.ep(e)["state"] == "STARTED"
    f.clock.advance(40)
    f.scale()
    assert f.ep(e)["state"] == "STOPPING"
    assert "last request at" in f.events(e, "idle")[0]


def test_a_held_request_counts_as_traffic(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 0, 1, inactive_timeout=1)
    f.settle()
    long_ago = f.clock.now() - timedelta(hours=1)
    f.clock.advance(120)
    f.load(e, 0, 1, last_request_at=long_ago)
    f.scale()
    assert f.ep(e)["state"] == "STARTED"


# the lease -----------------------------------------------------------------------------------------


def test_only_the_lease_holder_scales_and_a_stale_one_cannot_write(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 1})
    f.settle()
    other = f.reconciler()
    other.holder = "other-process:1"
    idle = f.autoscaler(rec=other)
    f.load(e, 5)
    f.scale(idle)
    assert f.ep(e)["desired"] == 1, "not the leader: no decision written"

    f.clock.advance(60)  # our lease expires; the other process takes over
    asyncio.run(other.pass_once())
    assert other.is_leader
    stale = Autoscaler(f.store, f.settings, f.clock, f.runtime.nodes, leader=lambda: f.rec.store,
                       wake=lambda: None, scrape=lambda r: asyncio.sleep(0, None))
    f.load(e, 5)
    with pytest.raises(StaleLease):
        asyncio.run(stale.pass_once())
    assert f.ep(e)["desired"] == 1
    f.scale(idle)
    assert f.ep(e)["desired"] == 5


def test_autoscaling_settings_are_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    env = {"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path)}
    cfg.write_text("[autoscaling]\nstabilisation_s = 60\ninterval_s = 1\n")
    settings = load_settings(env)
    assert settings.autoscaling.stabilisation_s == 60
    f = Fleet(tmp_path)
    auto = Autoscaler(f.store, replace(f.settings, autoscaling=settings.autoscaling), f.clock, f.runtime.nodes,
                      leader=lambda: None, wake=lambda: None)
    assert auto.config.stabilisation_s == 60, "the autoscaler runs on the table it was given"
    for bad in ('stabilisation_s = 0', 'kv_cache_target = 2', 'interval_s = "soon"', 'scrape_engines = 1',
                'stabilisaton_s = 60'):
        cfg.write_text(f"[autoscaling]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_settings(env)


def test_a_deployments_own_rules_hold_its_scale_up_for_its_window_and_cap_its_rate(tmp_path: Path) -> None:
    from dedicate.domain.scaling import Kind, RatePolicy, RateRules, ScalingRules

    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 1})
    f.settle()
    rules = ScalingRules(up_window_s=20, up=RateRules((RatePolicy(Kind.PODS, 2, 600),)))
    ep = f.store.get_endpoint(e)
    assert ep is not None and f.store.update_endpoint(ep, f.clock.now(), None, scaling_rules=rules.to_json())
    f.run_for(10, {e: (8, 0)})
    assert f.ep(e)["desired"] == 1, "inside the up window: held"
    f.run_for(30, {e: (8, 0)})
    assert f.ep(e)["desired"] == 3, "after the window, as far as 2 replicas per 10 minutes allow"
    assert any("up window" in m and "scaleUp policies allow 3" in m for m in f.events(e, "scaled")), \
        f.events(e, "scaled")


def test_a_ttft_metric_scales_on_what_the_gateways_timed(tmp_path: Path) -> None:
    from dedicate.domain import latency
    from dedicate.domain.records import DeploymentMinute
    from dedicate.domain.scaling import Metric, ScalingRules

    f = Fleet(tmp_path)
    e = f.create(ALICE, 1, 8, autoscaling={"target_concurrency": 100})
    f.settle()
    ep = f.store.get_endpoint(e)
    rules = ScalingRules(metric=Metric("ttft", 200, 95))
    assert ep is not None and f.store.update_endpoint(ep, f.clock.now(), None, scaling_rules=rules.to_json())
    h = latency.empty()
    for _ in range(20):
        latency.add(h, 700)  # every first token took 700 ms: 3.5 times the target
    now = f.clock.now()
    f.store.write_minutes("gw-1", [DeploymentMinute(e, now.replace(second=0, microsecond=0), 20, 0, 0, 0,
                                                    {"200": 20}, h, list(h))], now)
    f.load(e, 1)
    f.scale()
    assert f.ep(e)["desired"] == 4, f.events(e, "scaled")
    assert "ttft p95" in f.events(e, "scaled")[-1]
