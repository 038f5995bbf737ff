"""The published Together CLI (`tg`, together==2.42.0) drives a real dedicate server unchanged.

The CLI lives in its own virtual environment (`make clients`), so every command
runs as a subprocess, isolated as docs/API-COMPAT.md says: its own HOME and
XDG_CONFIG_HOME (a stored `tg login` would override the key and pin the base
URL), telemetry and version checks off, `--json` passed explicitly, and a
timeout on every call (`--wait` never ends on ERROR).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, CliResult, Server, run_client, together_env

pytestmark = pytest.mark.e2e

CLIENTS_VERSION = "2.42.0"
MODEL = "dedicate/tiny-chat"
HARDWARE = "1x_cpu"
UNKNOWN_ID = "endpoint-00000000-0000-4000-8000-000000000000"
WAIT_TIMEOUT_S = 150.0
CALL_TIMEOUT_S = 60.0


def clients_bin(name: str) -> Path:
    """A program of the clients' virtual environment; missing is a failure, never a skip."""
    path = ROOT / ".venv-clients" / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the together clients are not installed; run `make clients` "
                    f"(it installs together=={CLIENTS_VERSION} into .venv-clients)", pytrace=False)
    return path


Result = CliResult


class Tg:
    """`tg` pointed at one server with one key, in a home of its own."""

    def __init__(self, server: Server, home: Path, key: str, **env_extra: str) -> None:
        self.server = server
        self.exe = str(clients_bin("tg"))
        self.env = together_env(home, f"{server.url}/v1", key, **env_extra)

    def __call__(self, *args: str, json_output: bool = True, timeout: float = CALL_TIMEOUT_S) -> Result:
        argv = [*args, "--json" if json_output else "--no-json"]
        return run_client(self.exe, argv, self.env, timeout, self.server)

    def ok(self, *args: str, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run with --json, expect exit 0, return the parsed JSON document."""
        result = self(*args, timeout=timeout)
        assert result.rc == 0, f"`tg {' '.join(result.args)}` failed:\n{result}\n{self.server.log_tail()}"
        return result.json()


@pytest.fixture(scope="module")
def tg(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tg:
    cli = Tg(server, tmp_path_factory.mktemp("tg-home"), server.admin_key)
    version = subprocess.run([cli.exe, "--version"], env=cli.env, capture_output=True, text=True,
                             timeout=CALL_TIMEOUT_S)
    if version.stdout.strip() != CLIENTS_VERSION:
        pytest.fail(f"expected the together CLI {CLIENTS_VERSION}, found {version.stdout.strip()!r} "
                    f"{version.stderr.strip()}; run `make clients`", pytrace=False)
    return cli


@pytest.fixture(scope="module")
def created(tg: Tg, server: Server) -> Iterator[dict[str, Any]]:
    """One endpoint made by `tg endpoints create --wait`, shared by the lifecycle tests below, in order."""
    out = tg.ok("endpoints", "create", MODEL, "--hardware", HARDWARE, "--min-replicas", "1",
                "--max-replicas", "1", "--wait", timeout=WAIT_TIMEOUT_S)
    try:
        yield out
    finally:
        with server.client() as c, contextlib.suppress(Exception):
            c.delete(f"/v1/endpoints/{out['id']}")


def test_cli_hardware_for_model_lists_cpu_with_price(tg: Tg) -> None:
    hardware = tg.ok("endpoints", "hardware", "--model", MODEL)
    assert isinstance(hardware, list)
    by_id = {h["id"]: h for h in hardware}
    assert HARDWARE in by_id, hardware
    cpu = by_id[HARDWARE]
    assert cpu["object"] == "hardware"
    assert cpu["pricing"]["cents_per_minute"] > 0
    assert cpu["specs"]["gpu_count"] == 1
    assert cpu["availability"] == {"status": "available"}

    available = tg.ok("endpoints", "hardware", "--model", MODEL, "--available")
    assert [h["id"] for h in available] == [h["id"] for h in hardware if h["availability"]["status"] == "available"]


def test_cli_create_wait_returns_once_started(created: dict[str, Any], server: Server) -> None:
    assert created["id"].startswith("endpoint-")
    assert created["state"] == "STARTED"
    assert created["object"] == "endpoint"
    assert created["type"] == "dedicated"
    assert created["model"] == MODEL
    assert created["hardware"] == HARDWARE
    assert created["autoscaling"] == {"min_replicas": 1, "max_replicas": 1}
    assert created["owner"] == "admin"
    assert created["name"].startswith("admin/")
    assert created["display_name"] == created["name"]
    # STARTED means a replica is really serving: the server agrees.
    with server.client() as c:
        live = c.get(f"/v1/endpoints/{created['id']}").json()
    assert live["state"] == "STARTED"
    assert live["replicas"]["ready"] == 1


def test_cli_get_shows_the_endpoint(tg: Tg, created: dict[str, Any]) -> None:
    got = tg.ok("endpoints", "get", created["id"])
    for field in ("id", "name", "model", "hardware", "owner", "type", "created_at", "autoscaling"):
        assert got[field] == created[field], field
    assert got["state"] == "STARTED"
    # `tg endpoints <endpoint-id>` is the CLI's shorthand for retrieve.
    assert tg.ok("endpoints", created["id"])["id"] == created["id"]


def test_cli_list_includes_the_endpoint(tg: Tg, created: dict[str, Any]) -> None:
    listed = tg.ok("endpoints", "list")
    assert isinstance(listed, list)
    mine = [e for e in listed if e["id"] == created["id"]]
    assert len(mine) == 1, listed
    entry = mine[0]
    assert entry["object"] == "endpoint"
    assert entry["name"] == created["name"]
    assert entry["model"] == MODEL
    assert entry["type"] == "dedicated"
    assert entry["state"] == "STARTED"


def test_cli_update_changes_display_name_and_merges_autoscaling(tg: Tg, created: dict[str, Any]) -> None:
    updated = tg.ok("endpoints", "update", created["id"], "--display-name", "CLI tiny", "--max-replicas", "2")
    assert updated["id"] == created["id"]
    assert updated["display_name"] == "CLI tiny"
    # Only max was sent: min keeps its stored value.
    assert updated["autoscaling"] == {"min_replicas": 1, "max_replicas": 2}
    assert updated["state"] == "STARTED"

    again = tg.ok("endpoints", "get", created["id"])
    assert again["display_name"] == "CLI tiny"
    assert again["autoscaling"] == {"min_replicas": 1, "max_replicas": 2}

    # A bound the server refuses is an error exit, not a silent success.
    bad = tg("endpoints", "update", created["id"], "--min-replicas", "5")
    assert bad.rc != 0, str(bad)
    assert "min_replicas" in bad.stdout, str(bad)
    assert tg.ok("endpoints", "get", created["id"])["autoscaling"] == {"min_replicas": 1, "max_replicas": 2}


def test_cli_stop_wait_returns_once_stopped(tg: Tg, created: dict[str, Any]) -> None:
    out = tg.ok("endpoints", "stop", created["id"], "--wait", timeout=WAIT_TIMEOUT_S)
    assert out == {"message": "Endpoint stopped", "id": created["id"], "state": "STOPPED"}
    got = tg.ok("endpoints", "get", created["id"])
    assert got["state"] == "STOPPED"
    assert got["replicas"]["ready"] == 0
    assert got["replicas"]["desired"] == 0


def test_cli_start_wait_returns_once_started(tg: Tg, server: Server, created: dict[str, Any]) -> None:
    if tg.ok("endpoints", "get", created["id"])["state"] != "STOPPED":  # when run on its own
        with server.client() as c:
            assert c.patch(f"/v1/endpoints/{created['id']}", json={"state": "STOPPED"}).status_code == 200
        server.wait_state(created["id"], {"STOPPED"})
    out = tg.ok("endpoints", "start", created["id"], "--wait", timeout=WAIT_TIMEOUT_S)
    assert out["id"] == created["id"]
    assert out["state"] == "STARTED"
    assert out["replicas"]["ready"] >= 1


def test_cli_delete_then_get_answers_not_found(tg: Tg, created: dict[str, Any]) -> None:
    assert tg.ok("endpoints", "delete", created["id"]) == {"message": "Successfully deleted endpoint"}

    gone = tg("endpoints", "get", created["id"])
    assert gone.rc == 1, str(gone)
    error = gone.json()["error"]
    assert "not found" in error.lower() and "endpoint" in error.lower(), error
    assert created["id"] not in [e["id"] for e in tg.ok("endpoints", "list")]


def test_cli_create_no_auto_start_creates_stopped_endpoint(tg: Tg, server: Server) -> None:
    out = tg.ok("endpoints", "create", MODEL, "--hardware", HARDWARE, "--no-auto-start",
                "--display-name", "parked")
    try:
        assert out["state"] == "STOPPED"
        assert out["display_name"] == "parked"
        assert out["inactive_timeout"] is None  # the CLI sends null when unset
        assert out["replicas"]["desired"] == 0
    finally:
        assert tg.ok("endpoints", "delete", out["id"]) == {"message": "Successfully deleted endpoint"}


def test_cli_create_without_hardware_says_hardware_is_required(tg: Tg) -> None:
    # Text mode: the CLI's friendly outcome, chosen from the server's words, then the hardware table.
    text = tg("endpoints", "create", MODEL, json_output=False)
    assert text.rc == 1, str(text)
    assert "Missing required argument --hardware" in text.stdout, str(text)
    assert HARDWARE in text.stdout, str(text)  # the table of hardware that would work
    assert "Traceback" not in text.stdout + text.stderr, str(text)

    # JSON mode: the server's error envelope, verbatim.
    result = tg("endpoints", "create", MODEL)
    assert result.rc == 1, str(result)
    error = result.json()["error"]
    assert error["message"].startswith("hardware is required"), error
    assert error["param"] == "hardware"
    assert error["type"] == "invalid_request_error"


def test_cli_create_with_unknown_hardware_lists_what_works(tg: Tg) -> None:
    text = tg("endpoints", "create", MODEL, "--hardware", "8x_nvidia_h100_80gb_sxm", json_output=False)
    assert text.rc == 1, str(text)
    assert "Invalid hardware selected." in text.stdout, str(text)
    assert HARDWARE in text.stdout, str(text)


def test_cli_create_with_unknown_model_says_model_not_available(tg: Tg) -> None:
    text = tg("endpoints", "create", "nobody/no-such-model", "--hardware", HARDWARE, json_output=False)
    assert text.rc == 1, str(text)
    assert "was not found or is not available for dedicated" in " ".join(text.stdout.split()), str(text)


def test_cli_unknown_endpoint_id_answers_not_found(tg: Tg) -> None:
    result = tg("endpoints", "get", UNKNOWN_ID)
    assert result.rc == 1, str(result)
    doc = result.json()
    assert "not found" in doc["error"].lower() and "endpoint" in doc["error"].lower(), doc
    assert "hint" in doc

    text = tg("endpoints", "get", UNKNOWN_ID, json_output=False)
    assert text.rc == 1, str(text)
    assert "not found" in text.stdout, str(text)

    # `start` and `delete` have no friendly handler in tg 2.42: they print the server's envelope.
    for command in ("start", "delete"):
        failed = tg("endpoints", command, UNKNOWN_ID)
        assert failed.rc == 1, f"{command}: {failed}"
        assert failed.json()["error"]["code"] == "endpoint_not_found", f"{command}: {failed}"


def test_cli_whoami_reports_the_key_owner_as_project(tg: Tg) -> None:
    me = tg.ok("whoami")
    assert me["type"] == "project_api_key"
    assert me["project"]["id"] == "proj_admin" and me["project"]["slug"] == "admin"
    assert me["organization"]["id"] == "org_dedicate"
    assert me["api_key"]["id"]


def test_cli_bad_key_fails_authentication(server: Server, tmp_path: Path) -> None:
    # With a project given, the CLI skips /v3/whoami and shows its friendly authentication outcome.
    scoped = Tg(server, tmp_path / "scoped", "ddc_not_a_real_key", TOGETHER_PROJECT_ID="admin")
    result = scoped("endpoints", "list")
    assert result.rc == 1, str(result)
    assert result.json() == {"error": "Endpoints: Invalid API key or authentication failed."}

    # Without one, the CLI's own up-front /v3/whoami gets the 401 and the CLI exits on it
    # (tg 2.42 does not catch that error: it prints a traceback naming the server's message).
    bare = Tg(server, tmp_path / "bare", "ddc_not_a_real_key")
    result = bare("endpoints", "list")
    assert result.rc == 1, str(result)
    assert "AuthenticationError" in result.stderr, str(result)
    assert "authentication failed: the API key is not valid" in result.stderr, str(result)
