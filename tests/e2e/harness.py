"""Real dedicate server processes for end-to-end tests, and their teardown.

Every process a test starts is killed at teardown (its whole process group),
and so is every engine process that carries the server's instance id, so no
replica outlives the test that started it, even when the server was SIGKILLed
on purpose; teardown fails if one still runs.

Replica processes are counted from the operating system: every pid whose
command line carries ``--instance <this instance>``, not a dict keyed by
replica id, so a replica launched twice shows up as two processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dedicate.runtimes.local import process_start_time

ROOT = Path(__file__).resolve().parents[2]

FAST_CONFIG = """
[cpu]
slots = 4

[timing]
reconcile_interval_s = 0.2
probe_interval_s = 0  # every pass: these tests count probes by passes
probe_failure_threshold = 3
max_failures_before_ready = 3
"""


@dataclass(frozen=True)
class EngineProcess:
    """One live operating-system process that carries an instance id on its command line."""

    pid: int
    replica_id: str
    started: str  # the kernel's start time: a pid reused later is another process


def instance_processes(instance: str) -> list[EngineProcess]:
    """Every live (not zombie) process whose argv carries ``--instance instance``, by pid.

    Each pid counts, so two processes of one replica id are two entries.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        try:
            mine = "--instance" in argv and argv[argv.index("--instance") + 1] == instance
            replica_id = argv[argv.index("--replica-id") + 1] if "--replica-id" in argv else ""
        except IndexError:
            continue
        started = process_start_time(int(entry.name)) if mine else None
        if started is not None:
            found.append(EngineProcess(int(entry.name), replica_id, started))
    return sorted(found, key=lambda p: p.pid)


def kill_instance_processes(instance: str, timeout: float = 10.0) -> list[EngineProcess]:
    """SIGKILL every process of ``instance`` (and its process group); the ones still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = instance_processes(instance)
        if not left or time.monotonic() > deadline:
            return left
        for p in left:
            if process_start_time(p.pid) != p.started:
                continue  # gone, and the pid reused by another process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # a replica leads its own process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)  # and one that does not
        time.sleep(0.05)


class Server:
    """One `dedicate up` process on a port of its choosing, with its own data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, config: str = FAST_CONFIG,
                 shared_models: Path | None = None, instance: str | None = None) -> None:
        self.data_dir = data_dir
        self._instance = instance  # what its engines carry as --instance where not the data dir's id (ray)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "config.toml").write_text(config)
        if shared_models is not None:
            models = self.data_dir / "models"
            models.mkdir(exist_ok=True)
            link = models / "tiny-chat"
            if not link.exists():
                link.symlink_to(shared_models)
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def start(self, timeout: float = 60.0) -> Server:
        port_file = self.data_dir / "port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "DEDICATE_DATA_DIR": str(self.data_dir), "DEDICATE_PORT": "0",
               "DEDICATE_CONFIG": str(self.data_dir / "config.toml"), **self.extra_env}
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "dedicate.cli.main", "up"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_file.exists():
                self.port = int(port_file.read_text())
                self.url = f"http://127.0.0.1:{self.port}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return self
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.data_dir / "server.log").read_text().splitlines()[-n:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as Ctrl-C on `make up` would, and wait for the graceful exit."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the server to die by itself (a failpoint); its replicas keep running."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit within {timeout} s:\n{self.log_tail()}") from None
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the server alone: its replicas keep running."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    @property
    def instance(self) -> str:
        if self._instance is not None:
            return self._instance
        return (self.data_dir / "instance-id").read_text().strip()

    def engine_processes(self) -> list[EngineProcess]:
        """Every live engine process of this data directory's instance, one entry per pid."""
        return instance_processes(self.instance)

    def replica_processes(self) -> dict[str, int]:
        """Replica id → pid of every live replica process of this data directory.

        A dict keyed by replica id cannot show a replica that runs twice, so this
        refuses to build one that would hide a second process: it fails instead.
        """
        processes = self.engine_processes()
        twice = {rid: n for rid, n in Counter(p.replica_id for p in processes).items() if n > 1}
        assert not twice, f"replica ids with more than one process: {twice} in {processes}"
        return {p.replica_id: p.pid for p in processes}

    def cleanup(self) -> None:
        """Kill the server and every process of its instance; fail if one outlives that."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.kill()
        if self._instance is None and not (self.data_dir / "instance-id").exists():
            return
        left = kill_instance_processes(self.instance)
        assert not left, f"replica processes outlived SIGKILL at teardown: {left}"

    # API helpers -----------------------------------------------------------

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0,
                            headers={"authorization": f"Bearer {key or self.admin_key}"})

    def wait_state(self, endpoint_id: str, states: set[str], key: str | None = None,
                   timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        with self.client(key) as c:
            while time.monotonic() < deadline:
                last = c.get(f"/v1/endpoints/{endpoint_id}").json()
                if last.get("state") in states:
                    return last
                time.sleep(0.2)
        raise AssertionError(f"endpoint never reached {states}: {json.dumps(last)}\n{self.log_tail()}")

    def wait_for(self, endpoint_id: str, check: Callable[[dict[str, Any]], bool], what: str,
                 key: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the endpoint until ``check`` holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        with self.client(key) as c:
            while time.monotonic() < deadline:
                last = c.get(f"/v1/endpoints/{endpoint_id}").json()
                if check(last):
                    return last
                time.sleep(0.2)
        raise AssertionError(f"endpoint never {what}: {json.dumps(last)}\n{self.log_tail()}")

    def create_tiny(self, key: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {"model": "dedicate/tiny-chat", "hardware": "1x_cpu",
                "autoscaling": {"min_replicas": 1, "max_replicas": 1}, **extra}
        with self.client(key) as c:
            resp = c.post("/v1/endpoints", json=body)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result


# the published Together clients, run as subprocesses ------------------------------------------------

@dataclass
class CliResult:
    """What one run of a client's command printed, and its exit status."""

    args: list[str]
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"`tg {' '.join(self.args)}` did not print JSON ({exc}):\n{self}") from None

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def together_env(home: Path, base_url: str, key: str, **extra: str) -> dict[str, str]:
    """The environment a Together CLI runs in here: this server and key, a home of its own (a stored
    `tg login` would override both), no telemetry, no version check, wide and plain output."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")}
    env.update({"TOGETHER_BASE_URL": base_url, "TOGETHER_API_KEY": key,
                "TOGETHER_CREDENTIALS_PATH": str(home / "no-credentials.json"), "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"), "TOGETHER_TELEMETRY_DISABLED": "1",
                "TOGETHER_DISABLE_VERSION_CHECK": "1", "CI": "1",
                "COLUMNS": "200",  # keep rich from wrapping what the assertions read
                "NO_COLOR": "1", **extra})
    return env


def run_client(exe: str, argv: list[str], env: dict[str, str], timeout: float, server: Server) -> CliResult:
    """One command, with a timeout; running past it fails with the server's log."""
    try:
        proc = subprocess.run([exe, *argv], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, cwd=env["HOME"])
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`tg {' '.join(argv)}` did not finish in {timeout} s\n"
                             f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n"
                             f"server log:\n{server.log_tail()}") from None
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)
