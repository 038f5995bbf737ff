"""The local runtime, with real child processes: finding them, their address, a process gone mid-look."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from dedicate.domain.records import Address
from dedicate.runtimes.base import LaunchSpec, Node
from dedicate.runtimes.local import LocalRuntime
from dedicate.runtimes.portfile import read_port


def sleeper(runtime: LocalRuntime, replica_id: str, tmp_path: Path) -> LaunchSpec:
    binding = runtime.binding(replica_id, "local")
    code = (f"import pathlib, time; p = pathlib.Path({str(binding.port_file)!r}); "
            "p.parent.mkdir(parents=True, exist_ok=True); p.write_text('4242'); time.sleep(60)")
    return LaunchSpec(replica_id, [sys.executable, "-c", code, "--replica-id", replica_id,
                                   "--instance", runtime.instance], {}, tmp_path / f"{replica_id}.log", "local")


def test_a_launched_replica_is_found_by_its_labels_and_reached_where_its_runtime_says(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path, f"test-{os.getpid()}-a", [Node("local", "cpu", 1)])
    handle = runtime.launch(sleeper(runtime, "r-1", tmp_path))
    try:
        deadline = time.monotonic() + 10
        while runtime.address_of("r-1") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.address_of("r-1") == Address("127.0.0.1", 4242)
        assert runtime.binding("r-1", "local").host == "127.0.0.1", "a local replica listens on loopback only"
        assert runtime.running() == {"r-1": handle}
    finally:
        runtime.stop(handle, 2.0)
    assert runtime.running() == {}


def test_a_process_gone_between_the_listing_and_the_look_is_skipped_not_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = LocalRuntime(tmp_path, f"test-{os.getpid()}-b", [Node("local", "cpu", 1)])
    handle = runtime.launch(sleeper(runtime, "r-2", tmp_path))
    try:
        def gone(pid: int) -> int:
            raise ProcessLookupError(pid)

        monkeypatch.setattr(os, "getpgid", gone)
        assert runtime.running() == {}
    finally:
        monkeypatch.undo()
        runtime.stop(handle, 2.0)


def test_a_port_file_with_garbage_or_nothing_gives_no_port(tmp_path: Path) -> None:
    assert read_port(tmp_path / "none") is None
    (tmp_path / "bad").write_text("eighty")
    assert read_port(tmp_path / "bad") is None
    (tmp_path / "zero").write_text("0")
    assert read_port(tmp_path / "zero") is None
