"""A pass asks the runtime about each replica's process only where its listing of running processes does not answer."""

from __future__ import annotations

from pathlib import Path

from dedicate.domain.replicas import ReplicaStatus
from dedicate.runtimes.base import Handle, ProcessState
from dedicate.runtimes.logtail import log_tail
from tests.control.test_reconciler import World


class PollCounting(World):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, slots=4)
        self.polled: list[int] = []
        poll = self.runtime.poll

        def counted(handle: Handle) -> ProcessState:
            self.polled.append(handle.pid)
            return poll(handle)

        self.runtime.poll = counted  # type: ignore[method-assign]


def ready(tmp_path: Path, replicas: int) -> tuple[PollCounting, str]:
    world = PollCounting(tmp_path)
    ep = world.ready_endpoint(replicas)
    world.polled.clear()
    return world, ep


def test_replicas_the_runtime_lists_as_launched_are_not_polled_one_by_one(tmp_path: Path) -> None:
    world, ep = ready(tmp_path, 3)
    for _ in range(3):
        world.step()
    assert world.polled == [], "the listing of running processes said they run"
    assert world.replicas(ep) == [ReplicaStatus.READY] * 3


def test_a_replica_whose_process_exited_is_polled_and_its_exit_code_recorded(tmp_path: Path) -> None:
    world, ep = ready(tmp_path, 2)
    gone = world.store.replicas_of(ep)[0]
    world.runtime.crash(gone.id, code=7)
    world.step()
    assert world.polled == [gone.pid], "only the replica missing from the listing is asked"
    (after,) = [r for r in world.store.replicas_of(ep) if r.id == gone.id]
    assert after.facts.exit_code == 7
    assert after.status is not ReplicaStatus.READY


def test_a_listed_process_with_another_start_time_is_polled_not_trusted(tmp_path: Path) -> None:
    """A pid the listing finds, started at another time, is another process (the pid was reused)."""
    world, ep = ready(tmp_path, 1)
    (replica,) = world.store.replicas_of(ep)
    listing = world.runtime.running

    def reused() -> dict[str, Handle]:
        return {rid: Handle(h.pid, "another start") for rid, h in listing().items()}

    world.runtime.running = reused  # type: ignore[method-assign]
    world.step()
    assert world.polled == [replica.pid]


def test_a_log_tail_leaves_out_the_servers_lines_on_the_way_out(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_text("\n".join([
        "INFO: loading", "ERROR: --fail-after-start: giving up without becoming healthy",
        "INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
        "INFO:     Application shutdown complete.", "INFO:     Finished server process [123]", ""]))
    tail = log_tail(str(log), lines=2)
    assert tail == "INFO: loading | ERROR: --fail-after-start: giving up without becoming healthy"
