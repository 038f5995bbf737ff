"""dedicate's own CLI against a real server: every command, JSON output, --wait progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.harness import FAST_CONFIG, Server


def cli(server: Server, *args: str, key: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEDICATE_URL": server.url}
    env.pop("DEDICATE_API_KEY", None)
    if key is not None:
        env["DEDICATE_API_KEY"] = key
    else:  # the default: the admin key in the data directory
        env["DEDICATE_DATA_DIR"] = str(server.data_dir)
    return subprocess.run([sys.executable, "-m", "dedicate.cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def ok_json(server: Server, *args: str, key: str | None = None) -> Any:
    out = cli(server, *args, "--json", key=key)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_endpoint_lifecycle_through_the_cli(server: Server) -> None:
    hw = ok_json(server, "hardware", "--model", "dedicate/tiny-chat")
    assert [h["id"] for h in hw] == ["1x_cpu"] and hw[0]["availability"]["status"] == "available"
    models = ok_json(server, "models")
    assert any(m["id"] == "dedicate/tiny-chat" and m["deployable"] for m in models)

    created = cli(server, "endpoints", "create", "dedicate/tiny-chat", "--hardware", "1x_cpu",
                  "--min-replicas", "1", "--max-replicas", "2", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    ep = json.loads(created.stdout)
    assert ep["state"] == "STARTED" and ep["replicas"]["ready"] == 1
    assert "cents per replica-minute" in created.stderr, "the price is shown before creating"

    assert [e["id"] for e in ok_json(server, "endpoints", "list")] == [ep["id"]]
    assert ok_json(server, "endpoints", "get", ep["id"])["name"] == ep["name"]
    updated = ok_json(server, "endpoints", "update", ep["id"], "--display-name", "mine",
                      "--inactive-timeout", "30")
    assert updated["display_name"] == "mine" and updated["inactive_timeout"] == 30

    stopped = cli(server, "endpoints", "stop", ep["id"], "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert "STOPPED" in stopped.stdout and "STOPPING" in stopped.stderr, "--wait shows progress"
    assert ok_json(server, "endpoints", "start", ep["id"], "--wait")["state"] == "STARTED"
    kinds = [e["kind"] for e in ok_json(server, "endpoints", "events", ep["id"])]
    assert kinds[0] == "created" and "ready" in kinds and "stopped" in kinds

    assert cli(server, "endpoints", "delete", ep["id"]).returncode == 0
    gone = cli(server, "endpoints", "get", ep["id"])
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_cli_errors_are_messages_and_a_nonzero_exit(server: Server) -> None:
    bad = cli(server, "endpoints", "create", "dedicate/tiny-chat", "--hardware", "9x_cpu")
    assert bad.returncode == 1
    assert "invalid hardware provided" in bad.stderr and "Traceback" not in bad.stderr
    nothing = cli(server, "endpoints", "update", "endpoint-x")
    assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
    wrong_key = cli(server, "endpoints", "list", key="ddc_nope")
    assert wrong_key.returncode == 1 and "authentication" in wrong_key.stderr


def test_keys_create_list_revoke(server: Server) -> None:
    made = ok_json(server, "keys", "create", "--owner", "hank", "--name", "laptop")
    assert made["owner"] == "hank" and made["key"].startswith("ddc_")
    listed = ok_json(server, "keys", "list", key=made["key"])
    assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
    assert cli(server, "keys", "revoke", made["id"], key=made["key"]).returncode == 0
    assert cli(server, "endpoints", "list", key=made["key"]).returncode == 1


def test_the_cli_finds_the_server_from_the_config_file_alone(tmp_path: Path) -> None:
    """data_dir in the file named by DEDICATE_CONFIG, relative to it: `dedicate up` keeps its port file and
    admin key there, and the CLI, given only DEDICATE_CONFIG and run from elsewhere, finds both."""
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "dedicate.toml"
    cfg.write_text(FAST_CONFIG + '[server]\ndata_dir = "../state"\nport = 0\n\n[gpu]\ndiscover = false\n')
    server = Server(tmp_path / "state", env={"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": "",
                                             "DEDICATE_PORT": ""})
    try:
        server.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEDICATE_")}
        env["DEDICATE_CONFIG"] = str(cfg)
        (tmp_path / "elsewhere").mkdir()
        out = subprocess.run([sys.executable, "-m", "dedicate.cli.main", "nodes", "--json"], env=env, text=True,
                             capture_output=True, timeout=60, cwd=tmp_path / "elsewhere")
        assert out.returncode == 0, out.stderr + server.log_tail()
        assert [n["name"] for n in json.loads(out.stdout)] == ["local"], "an admin-only call: the admin key was found"
    finally:
        server.cleanup()


def test_an_endpoint_with_two_deployments_through_the_cli(server: Server) -> None:
    with server.client() as c:
        key = c.post("/v1/keys", json={"owner": "cleo"}).json()["key"]
    me = ok_json(server, "whoami", key=key)
    assert me["project"]["id"] == "proj_cleo"
    blue = ok_json(server, "deploy", "dedicate/tiny-chat", "--endpoint", "chat", "--deployment", "blue",
                   "--hardware", "1x_cpu", key=key)
    assert blue["name"] == "cleo/chat/blue" and blue["status"]["state"] == "DEPLOYMENT_STATE_PROVISIONING"
    green = ok_json(server, "deploy", "dedicate/tiny-chat", "--endpoint", "chat", "--deployment", "green",
                    "--min-replicas", "0", "--max-replicas", "0", "--weight", "1", key=key)
    (ep,) = ok_json(server, "deployments", "list", key=key)
    weights = {s["deploymentId"]: s["weight"] for s in ep["trafficSplit"]}
    assert weights == {blue["id"]: 1.0, green["id"]: 1.0}, "the first took the traffic; the second its weight"
    text = cli(server, "deployments", "list", "chat", key=key)
    assert text.returncode == 0 and "blue" in text.stdout and "green" in text.stdout, text.stderr
    split = ok_json(server, "deployments", "split", "chat", "blue=3", "green=0", key=key)
    assert {s["deploymentId"]: s["weight"] for s in split["trafficSplit"]} == {blue["id"]: 3.0, green["id"]: 0.0}
    bad = cli(server, "deployments", "split", "chat", "blue", key=key)
    assert bad.returncode == 1 and "DEPLOYMENT=WEIGHT" in bad.stderr
    assert cli(server, "deployments", "delete", "chat", "green", key=key).returncode == 0
    (ep,) = ok_json(server, "deployments", "list", key=key)
    assert [d["id"] for d in ep["deployments"]] == [blue["id"]]
    assert cli(server, "deployments", "delete", "chat", "blue", key=key).returncode == 0
