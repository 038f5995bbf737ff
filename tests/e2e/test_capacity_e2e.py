"""Capacity end to end: real servers with one 8 x H100 logical node, node-a, running the synthetic engine.

The same scenarios as tests/control/test_capacity.py (fake runtime), here with real server processes,
real replica processes, real probes and the real reconcile loop: partial scaling, the queue with
positions, surplus yielding to a queued minimum, raising a minimum, quotas, stopping in every state,
failures ending in ERROR, the event log and hardware this installation can never provide.

Every scenario runs on both runtimes: ``local`` (node-a a ``[[nodes]]`` entry, replicas children of
the server) and ``ray`` (node-a a node of the session's Ray cluster with 8 logical GPUs, in a pool of
the server's own, replicas actors in placement groups).

Correctness never rests on a fixed sleep: every wait polls the API (or /proc) with a generous
deadline. The one fixed pause checks that something does *not* happen (no launches after ERROR).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Server
from tests.raycluster import RayCluster, unique

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NODE_GPUS = 8


def hw(gpus: int, gpu: str = "h100") -> str:
    return f"{gpus}x_nvidia_{gpu}_80gb_sxm"


LOCAL_NODE = f"""
[[nodes]]
name = "node-a"
gpu_type = "h100-80gb"
gpus = {NODE_GPUS}
engine = "synthetic"
"""


def node_config(startup_delay_s: float = 0.2, fail_after_start: bool = False,
                max_failures_before_ready: int = 3, engines_enabled: tuple[str, ...] = ()) -> str:
    """Everything but where node-a comes from (``Runtimes.server`` adds that)."""
    enabled = ", ".join(f'"{e}"' for e in engines_enabled)
    return f"""
[cpu]
slots = 0

[engines]
enabled = [{enabled}]

[engines.synthetic]
startup_delay_s = {startup_delay_s}
ttft_s = 0.01
tokens_per_s = 200
fail_after_start = {"true" if fail_after_start else "false"}

[timing]
reconcile_interval_s = 0.2
probe_interval_s = 0  # every pass: these tests count probes by passes
probe_failure_threshold = 3
max_failures_before_ready = {max_failures_before_ready}
"""


# -------------------------------------------------------------------------------- servers


@dataclass
class Runtimes:
    """Makes servers whose node-a is a ``[[nodes]]`` entry (local) or a Ray node of their own (ray)."""

    kind: str
    ray: RayCluster | None = None
    pools: list[str] = field(default_factory=list)

    def server(self, data_dir: Path, config: str) -> Server:
        if self.ray is None:
            return Server(data_dir, config=config + LOCAL_NODE)
        pool = unique("cap")
        self.ray.add_gpu_node(f"{pool}-node-a", NODE_GPUS, pool, shown_as="node-a")
        self.pools.append(pool)
        namespace = unique("capns")
        # A Ray node's engine label is read at run time; the engine it names is enabled in the config.
        config = config.replace("enabled = [", 'enabled = ["synthetic", ', 1)
        return Server(data_dir, config=config + self.ray.runtime_config(pool, namespace), instance=namespace)

    def close(self) -> None:
        if self.ray is not None:
            for pool in self.pools:
                self.ray.remove(f"{pool}-node-a")


@pytest.fixture(scope="module", params=["local", "ray"])
def runtimes(request: pytest.FixtureRequest) -> Iterator[Runtimes]:
    r = Runtimes(request.param, request.getfixturevalue("ray_cluster") if request.param == "ray" else None)
    yield r
    r.close()


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory, runtimes: Runtimes) -> Iterator[Server]:
    """One server with node-a (8 x H100, synthetic) shared by the module's tests.

    No demo model is linked in: the synthetic engine needs no weights, and building tiny-chat
    would cost seconds of torch import.
    """
    s = runtimes.server(tmp_path_factory.mktemp(f"capacity-{runtimes.kind}"), node_config())
    try:
        yield s.start()
    finally:
        s.cleanup()


@pytest.fixture
def gpu(gpu_server: Server) -> Iterator[Server]:
    """The shared server, emptied after the test: every endpoint deleted and every slot free again."""
    yield gpu_server
    reset(gpu_server)


@pytest.fixture
def own_server(tmp_path: Path, runtimes: Runtimes) -> Iterator[Callable[..., Server]]:
    """A server of its own config (make_server without the demo model); killed with its replicas after."""
    servers: list[Server] = []

    def make(name: str, config: str) -> Server:
        s = runtimes.server(tmp_path / name, config)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.cleanup()


# -------------------------------------------------------------------------------- helpers


def wait_for(what: str, check: Callable[[], Any], server: Server, timeout: float = 60.0,
             interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value and the server log."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}\n"
                                 f"{server.log_tail()}")
        time.sleep(interval)


def wait_endpoint(server: Server, endpoint_id: str, pred: Callable[[dict[str, Any]], bool], what: str,
                  timeout: float = 60.0) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        with server.client() as c:
            got: dict[str, Any] = c.get(f"/v1/endpoints/{endpoint_id}").json()
        seen[:] = [got]
        return got if pred(got) else None

    try:
        result: dict[str, Any] = wait_for(what, check, server, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nendpoint: {seen[-1] if seen else None}") from None
    return result


def create(c: httpx.Client, gpus: int, min_r: int, max_r: int | None = None, gpu: str = "h100",
           **extra: Any) -> dict[str, Any]:
    resp = c.post("/v1/endpoints", json={
        "model": MODEL, "hardware": hw(gpus, gpu),
        "autoscaling": {"min_replicas": min_r, "max_replicas": max_r or min_r}, **extra})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def error_of(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    return err


def node_a(c: httpx.Client) -> dict[str, Any]:
    nodes = c.get("/v1/nodes").json()["data"]
    (node,) = [n for n in nodes if n["name"] == "node-a"]
    return dict(node)


def events(c: httpx.Client, endpoint_id: str) -> list[dict[str, Any]]:
    resp = c.get(f"/v1/endpoints/{endpoint_id}/events")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def kinds(c: httpx.Client, endpoint_id: str) -> list[str]:
    return [e["kind"] for e in events(c, endpoint_id)]


def set_state(c: httpx.Client, endpoint_id: str, state: str) -> dict[str, Any]:
    resp = c.patch(f"/v1/endpoints/{endpoint_id}", json={"state": state})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def scale(c: httpx.Client, endpoint_id: str, replicas: int) -> dict[str, Any]:
    resp = c.post(f"/v1/endpoints/{endpoint_id}/scale", json={"replicas": replicas})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def replica_pids(server: Server, c: httpx.Client, endpoint_id: str) -> dict[str, int]:
    """Replica id → pid of the live processes of one endpoint (ids from the node view)."""
    name = c.get(f"/v1/endpoints/{endpoint_id}").json()["name"]
    mine = {h["replica"] for n in c.get("/v1/nodes").json()["data"] for h in n["replicas"] if h["endpoint"] == name}
    return {rid: pid for rid, pid in server.replica_processes().items() if rid in mine}


def ready(n: int, queued: int | None = None, state: str = "STARTED") -> Callable[[dict[str, Any]], bool]:
    def pred(e: dict[str, Any]) -> bool:
        r = e["replicas"]
        return bool(e["state"] == state and r["ready"] == n and r["starting"] == 0 and r["stopping"] == 0
                    and (queued is None or r["queued"] == queued))
    return pred


def in_state(*states: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["state"] in states


def queued_at(position: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["state"] == "PENDING" and e["queue_position"] == position


def reset(server: Server) -> None:
    """Delete every endpoint; wait until node-a is all free and no replica process is left."""
    with server.client() as c:
        for e in c.get("/v1/endpoints", params={"mine": "false"}).json()["data"]:
            assert c.delete(f"/v1/endpoints/{e['id']}").status_code == 204
        wait_for("node-a to be free again", lambda: node_a(c)["free"] == NODE_GPUS and not node_a(c)["replicas"],
                 server, timeout=60)
    wait_for("every replica process to exit", lambda: server.replica_processes() == {}, server, timeout=30)


# -------------------------------------------------------------------------------- 1. partial scaling


def test_partial_scaling_runs_what_fits_and_queues_the_rest(gpu: Server) -> None:
    with gpu.client() as c:
        ep = create(c, 1, 2, 10)
        scaled = scale(c, ep["id"], 10)
        assert scaled["replicas"]["desired"] == 10
        wait_endpoint(gpu, ep["id"], ready(8, queued=2), "8 ready and 2 queued")
        # The counts are derived at read time; the message is written by the next reconcile pass.
        got = wait_endpoint(gpu, ep["id"], lambda e: "8 of 10 replicas ready" in e["status_message"],
                            "its message caught up")
        assert got["state"] == "STARTED"
        assert "availability limited" in got["status_message"]
        node = node_a(c)
        assert node["free"] == 0 and len(node["replicas"]) == 8
        assert all(h["status"] == "ready" for h in node["replicas"])
        assert len(replica_pids(gpu, c, ep["id"])) == 8, "8 real processes, one per replica"
        # scaling beyond max is clamped to max
        assert scale(c, ep["id"], 50)["replicas"]["desired"] == 10


# -------------------------------------------------------------------------------- 2. the queue


def test_the_queue_has_positions_and_moves_by_itself_when_capacity_frees(gpu: Server) -> None:
    with gpu.client() as c:
        a = create(c, 8, 1)
        wait_endpoint(gpu, a["id"], ready(1), "A running")
        b = create(c, 8, 1)
        cc = create(c, 4, 1)
        got_b = wait_endpoint(gpu, b["id"], queued_at(1), "B queued at 1")
        wait_endpoint(gpu, cc["id"], queued_at(2), "C queued at 2")
        assert "queued: position 1" in got_b["status_message"]
        assert "8x h100-80gb" in got_b["status_message"]
        assert got_b["replicas"]["queued"] == 1
        queue = [(q["endpoint"], q["position"], q["kind"]) for q in c.get("/v1/queue").json()["data"]]
        assert queue == [(b["id"], 1, "minimum"), (cc["id"], 2, "minimum")]

        set_state(c, a["id"], "STOPPED")  # nobody asks B to start: the queue moves by itself
        wait_endpoint(gpu, a["id"], in_state("STOPPED"), "A stopped")
        got_b = wait_endpoint(gpu, b["id"], ready(1), "B started from the queue")
        assert got_b["queue_position"] is None
        got_c = wait_endpoint(gpu, cc["id"], queued_at(1), "C moved up to position 1")
        assert "queued: position 1" in got_c["status_message"]
        queue = [(q["endpoint"], q["position"]) for q in c.get("/v1/queue").json()["data"]]
        assert queue == [(cc["id"], 1)]


# -------------------------------------------------------------------------------- 3. surplus yields


def test_surplus_yields_to_another_endpoints_queued_minimum(gpu: Server) -> None:
    with gpu.client() as c:
        a = create(c, 1, 1, 8)
        wait_endpoint(gpu, a["id"], ready(1), "A's minimum running")
        oldest = replica_pids(gpu, c, a["id"])
        scale(c, a["id"], 8)
        wait_endpoint(gpu, a["id"], ready(8, queued=0), "A on all 8 slots")
        before = replica_pids(gpu, c, a["id"])
        assert len(before) == 8

        b = create(c, 4, 1)
        wait_endpoint(gpu, b["id"], ready(1), "B started on yielded slots")
        got_a = wait_endpoint(gpu, a["id"], ready(4, queued=4), "A down to 4 running, 4 queued")
        assert got_a["state"] == "STARTED", "A's minimum was never touched"
        yielded = [e["message"] for e in events(c, a["id"]) if e["kind"] == "yielded"]
        assert len(yielded) == 4, yielded
        assert all("yielded to the queued minimum of" in m and b["name"] in m for m in yielded)
        after = replica_pids(gpu, c, a["id"])
        assert len(after) == 4 and set(after.items()) <= set(before.items()), \
            "exactly 4 yielded: the 4 survivors are the same processes, nothing was drained and restarted"
        assert set(oldest.items()) <= set(after.items()), "the newest surplus yields first, the oldest stays"
        assert node_a(c)["free"] == 0


# -------------------------------------------------------------------------------- 4. raising the minimum


def test_raising_min_replicas_queues_only_the_extra_at_the_back(gpu: Server) -> None:
    with gpu.client() as c:
        a = create(c, 4, 1, 2)
        wait_endpoint(gpu, a["id"], ready(1), "A running")
        before = replica_pids(gpu, c, a["id"])
        assert len(before) == 1
        waiting = create(c, 8, 1)
        wait_endpoint(gpu, waiting["id"], queued_at(1), "the 8x endpoint queued at 1")

        resp = c.patch(f"/v1/endpoints/{a['id']}", json={"autoscaling": {"min_replicas": 2, "max_replicas": 2}})
        assert resp.status_code == 200, resp.text
        got = wait_endpoint(gpu, a["id"], lambda e: e["queue_position"] == 2, "A's extra queued behind")
        assert got["state"] == "STARTED" and got["replicas"]["ready"] == 1 and got["replicas"]["queued"] == 1
        assert "queued: position 2" in got["status_message"]
        queue = [(q["endpoint"], q["position"]) for q in c.get("/v1/queue").json()["data"]]
        assert queue == [(waiting["id"], 1), (a["id"], 2)]
        # 4 slots are free, but the extra minimum waits its turn: strictly first come, first served.
        time.sleep(1.0)  # several passes at 0.2 s: nothing may be placed meanwhile
        assert node_a(c)["free"] == 4
        assert replica_pids(gpu, c, a["id"]) == before, "the running replica was never restarted"

        # Once the head leaves, the extra is placed; the first replica is still the same process.
        assert c.delete(f"/v1/endpoints/{waiting['id']}").status_code == 204
        wait_endpoint(gpu, a["id"], ready(2, queued=0), "A at its new minimum of 2")
        now = replica_pids(gpu, c, a["id"])
        assert len(now) == 2 and set(before.items()) <= set(now.items())


# -------------------------------------------------------------------------------- 5. quotas


def test_a_quota_caps_an_owners_committed_gpus(gpu: Server) -> None:
    with gpu.client() as admin:
        resp = admin.put("/v1/owners/bob/quota", json={"gpus": 4})
        assert resp.status_code == 200, resp.text
        assert resp.json()["gpu_quota"] == 4
        key = admin.post("/v1/keys", json={"owner": "bob"})
        assert key.status_code == 200, key.text
        secret = key.json()["key"]
    try:
        with gpu.client(secret) as bob:
            body = {"model": MODEL, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
            err = error_of(bob.post("/v1/endpoints", json={**body, "hardware": hw(8)}))
            assert err["code"] == "quota_exceeded"
            assert "0 GPU(s) committed of a quota of 4" in err["message"]
            assert "asks for 8 more" in err["message"]

            first = create(bob, 2, 1)
            err = error_of(bob.post("/v1/endpoints", json={**body, "hardware": hw(4)}))
            assert err["code"] == "quota_exceeded"
            assert "2 GPU(s) committed of a quota of 4" in err["message"] and "asks for 4 more" in err["message"]
            second = create(bob, 2, 1)

            owner = bob.get("/v1/owners/bob").json()
            assert owner["gpus_committed"] == 4 and owner["gpu_quota"] == 4
            for e in (first, second):
                wait_endpoint(gpu, e["id"], ready(1), "bob's 2x endpoints running")
            assert bob.get("/v1/owners/bob").json()["gpus_in_use"] == 4
            err = error_of(bob.post("/v1/endpoints", json={**body, "hardware": hw(1)}))
            assert err["code"] == "quota_exceeded", "not even one more GPU"
        with gpu.client() as admin:
            assert node_a(admin)["free"] == 4, "the refusals placed nothing"
    finally:
        with gpu.client() as admin:
            assert admin.put("/v1/owners/bob/quota", json={"gpus": None}).status_code == 200


# -------------------------------------------------------------------------------- 6. stop in every state


def test_stop_while_pending_leaves_the_queue(gpu: Server) -> None:
    with gpu.client() as c:
        a = create(c, 8, 1)
        wait_endpoint(gpu, a["id"], ready(1), "A running")
        b = create(c, 8, 1)
        cc = create(c, 8, 1)
        wait_endpoint(gpu, b["id"], queued_at(1), "B queued at 1")
        wait_endpoint(gpu, cc["id"], queued_at(2), "C queued at 2")

        set_state(c, b["id"], "STOPPED")
        got_b = wait_endpoint(gpu, b["id"], in_state("STOPPED"), "B stopped")
        assert got_b["queue_position"] is None and got_b["replicas"]["queued"] == 0
        wait_endpoint(gpu, cc["id"], queued_at(1), "C moved up to position 1")
        queue = [(q["endpoint"], q["position"]) for q in c.get("/v1/queue").json()["data"]]
        assert queue == [(cc["id"], 1)]
        assert "placed" not in kinds(c, b["id"]), "B never held a slot"


def test_stop_while_starting_kills_the_process_before_it_is_ever_ready(
        own_server: Callable[..., Server]) -> None:
    slow = own_server("slow", node_config(startup_delay_s=5))
    with slow.client() as c:
        ep = create(c, 1, 1)
        got = wait_endpoint(slow, ep["id"], in_state("STARTING"), "STARTING", timeout=30)
        assert got["replicas"]["starting"] == 1
        wait_for("the replica process", lambda: len(slow.replica_processes()) == 1, slow, timeout=10)

        set_state(c, ep["id"], "STOPPED")
        got = wait_endpoint(slow, ep["id"], in_state("STOPPED"), "STOPPED", timeout=30)
        assert got["replicas"] == {"desired": 0, "ready": 0, "starting": 0, "queued": 0, "stopping": 0}
        wait_for("no replica process", lambda: slow.replica_processes() == {}, slow, timeout=15)
        seen = kinds(c, ep["id"])
        assert "launched" in seen and "stopped" in seen
        assert "ready" not in seen, "it never became ready"
        assert node_a(c)["free"] == NODE_GPUS


def test_stop_while_started_then_start_again_then_delete(gpu: Server) -> None:
    with gpu.client() as c:
        ep = create(c, 2, 1)
        wait_endpoint(gpu, ep["id"], ready(1), "STARTED")
        first = replica_pids(gpu, c, ep["id"])
        assert len(first) == 1

        set_state(c, ep["id"], "STOPPED")
        wait_endpoint(gpu, ep["id"], in_state("STOPPED"), "STOPPED")
        wait_for("its process to exit", lambda: not set(first) & set(gpu.replica_processes()), gpu, timeout=15)
        assert node_a(c)["free"] == NODE_GPUS

        restarted = set_state(c, ep["id"], "STARTED")
        assert restarted["state"] == "PENDING"
        wait_endpoint(gpu, ep["id"], ready(1), "STARTED again")
        second = replica_pids(gpu, c, ep["id"])
        assert len(second) == 1 and not set(second) & set(first), "a new replica, through placement again"
        assert kinds(c, ep["id"]).count("placed") == 2

        resp = c.delete(f"/v1/endpoints/{ep['id']}")
        assert resp.status_code == 204
        gone = c.get(f"/v1/endpoints/{ep['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "endpoint_not_found"
        wait_for("its process to exit", lambda: not set(second) & set(gpu.replica_processes()), gpu, timeout=15)
        wait_for("node-a free", lambda: node_a(c)["free"] == NODE_GPUS, gpu, timeout=15)


# -------------------------------------------------------------------------------- 7. failure → ERROR


def test_replicas_failing_before_ready_end_in_error_and_a_start_resets(own_server: Callable[..., Server]) -> None:
    failing = own_server("failing", node_config(fail_after_start=True, max_failures_before_ready=3))
    with failing.client() as c:
        ep = create(c, 1, 1)
        got = wait_endpoint(failing, ep["id"], in_state("ERROR"), "ERROR", timeout=60)
        message = got["status_message"]
        assert "exited with code 3" in message, message
        assert "--fail-after-start: giving up without becoming healthy" in message, "a line of the engine log"
        assert got["replicas"]["ready"] == 0
        wait_for("no replica process", lambda: failing.replica_processes() == {}, failing, timeout=10)
        launched = kinds(c, ep["id"]).count("launched")
        assert launched == 3
        time.sleep(2.0)  # ten passes: an ERROR endpoint must launch nothing more
        assert kinds(c, ep["id"]).count("launched") == 3
        assert failing.replica_processes() == {}
        assert wait_endpoint(failing, ep["id"], in_state("ERROR"), "still ERROR", timeout=1)

        restarted = set_state(c, ep["id"], "STARTED")
        assert restarted["state"] == "PENDING" and restarted["status_message"] == "waiting for placement"
        messages: list[str] = []

        def relaunched() -> bool:
            messages.append(c.get(f"/v1/endpoints/{ep['id']}").json()["status_message"])
            return kinds(c, ep["id"]).count("launched") == 4

        # At once: the backoff of the failures before ERROR does not outlive the restart.
        wait_for("a fresh launch right after the restart", relaunched, failing, timeout=4)
        assert not [m for m in messages if "retrying in" in m], messages
        wait_endpoint(failing, ep["id"], in_state("PENDING", "STARTING"), "going again", timeout=5)


# -------------------------------------------------------------------------------- 8. events


def test_the_event_log_tells_the_story(gpu: Server) -> None:
    with gpu.client() as c:
        blocker = create(c, 8, 1)
        wait_endpoint(gpu, blocker["id"], ready(1), "blocker running")
        ep = create(c, 1, 1)
        wait_endpoint(gpu, ep["id"], queued_at(1), "queued")
        set_state(c, blocker["id"], "STOPPED")
        wait_endpoint(gpu, ep["id"], ready(1), "started from the queue")
        set_state(c, ep["id"], "STOPPED")
        wait_endpoint(gpu, ep["id"], in_state("STOPPED"), "stopped")

        log = events(c, ep["id"])
        seen = [e["kind"] for e in log]
        for kind in ("created", "queued", "placed", "launched", "ready", "state", "stopping", "stopped"):
            assert kind in seen, (kind, seen)
        order = [seen.index(k) for k in ("created", "queued", "placed", "launched", "ready", "stopping", "stopped")]
        assert order == sorted(order), seen

        def first(kind: str) -> str:
            return str(next(e["message"] for e in log if e["kind"] == kind))

        assert "position 1" in first("queued")
        assert "on node node-a" in first("placed")
        assert "engine synthetic" in first("launched")
        states = [e["message"] for e in log if e["kind"] == "state"]
        assert any(m.startswith("PENDING → ") for m in states), states
        assert any("→ STARTED" in m for m in states), states
        assert any("→ STOPPED" in m for m in states), states
        assert any(e["kind"] == "updated" and "stop requested" in e["message"] for e in log)

        blocker_log = kinds(c, blocker["id"])
        assert "stopping" in blocker_log and "stopped" in blocker_log


# -------------------------------------------------------------------------------- 9. impossible hardware


def test_hardware_this_installation_can_never_hold_is_refused_at_once(gpu: Server) -> None:
    with gpu.client() as c:
        resp = c.post("/v1/endpoints", json={
            "model": MODEL, "hardware": hw(8), "autoscaling": {"min_replicas": 2, "max_replicas": 2}})
        err = error_of(resp)
        assert err["code"] == "hardware_unavailable"
        assert resp.headers["x-should-retry"] == "false"
        assert err["message"].startswith("Hardware for endpoint not available now. please try again later")
        assert "can hold 1 replica(s) of 8x_nvidia_h100_80gb_sxm" in err["message"]
        assert "min_replicas of 1" in err["message"]

        # This installation runs H100s on the synthetic engine and has no A100 node. No node has that
        # GPU type, so it is unavailable whatever else is wrong with it; its engine (vllm, not configured
        # here) is named beside what would work now.
        resp = c.post("/v1/endpoints", json={
            "model": MODEL, "hardware": hw(1, "a100"), "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
        err = error_of(resp)
        assert err["code"] == "hardware_unavailable" and err["param"] == "hardware"
        assert resp.headers["x-should-retry"] == "false"
        assert err["message"].startswith("Hardware for endpoint not available now. please try again later")
        assert "would also need the vllm engine, which this installation has not configured" in err["message"]
        assert f"what would work now: {MODEL} on {hw(1)}" in err["message"]

        assert c.get("/v1/endpoints", params={"mine": "false"}).json()["data"] == [], "nothing was created"
        assert node_a(c)["free"] == NODE_GPUS


def test_a_gpu_type_with_no_node_is_hardware_unavailable_naming_what_works_now(
        own_server: Callable[..., Server]) -> None:
    # Where the A100's engine is configured, only the missing node stands in the way: hardware_unavailable.
    s = own_server("vllm", node_config(engines_enabled=("vllm",)))
    with s.client() as c:
        resp = c.post("/v1/endpoints", json={
            "model": MODEL, "hardware": hw(1, "a100"), "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
        err = error_of(resp)
        assert err["code"] == "hardware_unavailable", err
        assert resp.headers["x-should-retry"] == "false"
        assert err["message"].startswith("Hardware for endpoint not available now. please try again later")
        assert "can hold 0 replica(s) of 1x_nvidia_a100_80gb_sxm" in err["message"]
        assert "min_replicas of" not in err["message"], "no smaller minimum helps: there is no A100 at all"
        assert f"what would work now: {MODEL} on {hw(1)}, {hw(2)}, {hw(4)}, {hw(8)}" in err["message"]

        # "now": a shape that is busy drops out of the hint.
        busy = create(c, 8, 1)
        wait_endpoint(s, busy["id"], ready(1), "8x running")
        err = error_of(c.post("/v1/endpoints", json={
            "model": MODEL, "hardware": hw(1, "a100"), "autoscaling": {"min_replicas": 1, "max_replicas": 1}}))
        assert err["code"] == "hardware_unavailable"
        assert "what would work now" not in err["message"], err["message"]
