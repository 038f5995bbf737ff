"""The legacy together 1.6 SDK (v1 API) drives a real dedicate server unchanged.

Its own virtual environment (`make clients` installs together==1.6.0 into .venv-tg16); each call
a script there, with `max_retries=0` (it retries 5xx and 429 five times otherwise) and its
"new SDK available" banner off. It sends `mine=True` on lists, and needs the error envelope and a
204 with an empty body on DELETE (../shared/API-COMPAT.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Server

pytestmark = pytest.mark.e2e

VERSION = "1.6.0"
MODEL = "dedicate/tiny-chat"

PRELUDE = """
import json, os, sys, time
import together
from together import Together

client = Together(api_key=os.environ["SDK_KEY"], base_url=os.environ["SDK_BASE_URL"], max_retries=0)
ARGS = json.loads(os.environ["SDK_ARGS"])

def dump(o):
    return o.model_dump(mode="json") if hasattr(o, "model_dump") else str(o)

def out(obj):
    print(json.dumps(obj, default=dump))
"""


def sdk(server: Server, script: str, timeout: float = 180.0, **args: Any) -> Any:
    python = ROOT / ".venv-tg16" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make clients` (it installs together=={VERSION})", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")}
    env.update(SDK_KEY=server.admin_key, SDK_BASE_URL=f"{server.url}/v1", SDK_ARGS=json.dumps(args),
               TOGETHER_NO_BANNER="1")
    proc = subprocess.run([str(python), "-c", PRELUDE + script], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{server.log_tail()}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_legacy_sdk_is_the_version_under_test(server: Server) -> None:
    assert sdk(server, "out(together.version)") == VERSION


def test_legacy_sdk_hardware_and_zones(server: Server) -> None:
    got = sdk(server, """
hw = client.endpoints.list_hardware(model=ARGS["model"])
out({"hardware": [h.id for h in hw], "zones": client.endpoints.list_avzones()})
""", model=MODEL)
    assert "1x_cpu" in got["hardware"] and got["zones"] == ["local"]


def test_legacy_sdk_creates_lists_updates_chats_and_deletes_an_endpoint(server: Server) -> None:
    got = sdk(server, """
ep = client.endpoints.create(model=ARGS["model"], hardware="1x_cpu", min_replicas=1, max_replicas=1,
                             display_name="legacy", inactive_timeout=0)
deadline = time.monotonic() + 150
while client.endpoints.get(ep.id).state != "STARTED":
    assert time.monotonic() < deadline, "never started"
    time.sleep(0.5)
mine = [e.id for e in client.endpoints.list(mine=True)]
updated = client.endpoints.update(ep.id, max_replicas=2, display_name="legacy 2")
reply = client.chat.completions.create(model=ep.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
stopped = client.endpoints.update(ep.id, state="STOPPED")
client.endpoints.delete(ep.id)
try:
    client.endpoints.get(ep.id)
    gone = None
except together.error.TogetherException as exc:
    gone = type(exc).__name__
out({"id": ep.id, "mine": mine, "max": updated.autoscaling.max_replicas, "display": updated.display_name,
     "role": reply.choices[0].message.role, "stopped": stopped.state, "gone": gone})
""", model=MODEL)
    assert got["id"] in got["mine"] and got["max"] == 2 and got["display"] == "legacy 2"
    assert got["role"] == "assistant" and got["stopped"] in ("STOPPING", "STOPPED")
    assert got["gone"] is not None, "a deleted endpoint is not found"


def test_legacy_sdk_sees_a_bad_request_as_an_error_with_the_servers_message(server: Server) -> None:
    got = sdk(server, """
try:
    client.endpoints.create(model=ARGS["model"], hardware="9x_cpu", min_replicas=1, max_replicas=1)
    out({"raised": None})
except together.error.TogetherException as exc:
    out({"raised": type(exc).__name__, "message": str(exc)})
""", model=MODEL)
    assert got["raised"] is not None and "hardware" in got["message"], got
