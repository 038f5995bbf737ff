"""The newest `tg` (together==3.1.1, which speaks the v2 API) drives a real dedicate server unchanged.

Its own virtual environment (`make clients` installs it into .venv-tg3), every command a subprocess,
isolated as ../shared/API-COMPAT-V2.md §1.1 says: the API root as base URL (3.1.1 puts /v1, /v2 and
/v3 in each path itself), no stored login (it would override the key and pin the base URL),
telemetry and version checks off, `--json` passed explicitly, a timeout on every call.

Here: identity (`whoami`, `projects list`) and the catalog a deploy reads (`models public`,
`models configs`). Endpoints with deployments come with the v2 endpoint routes.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, Server

pytestmark = pytest.mark.e2e

TG3_VERSION = "3.1.1"
MODEL = "dedicate/tiny-chat"
CALL_TIMEOUT_S = 60.0


def tg3_bin() -> Path:
    """`tg` of the 3.1.1 environment; missing is a failure, never a skip."""
    path = ROOT / ".venv-tg3" / "bin" / "tg"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make clients` (it installs together=={TG3_VERSION} into .venv-tg3)",
                    pytrace=False)
    return path


@dataclass
class Result:
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


class Tg3:
    """`tg` 3.1.1 pointed at one server with one key, in a home of its own."""

    def __init__(self, server: Server, home: Path, key: str, **env_extra: str) -> None:
        self.server = server
        self.exe = str(tg3_bin())
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")}
        env.update({
            "TOGETHER_BASE_URL": server.url,
            "TOGETHER_API_KEY": key,
            "TOGETHER_CREDENTIALS_PATH": str(home / "no-credentials.json"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "TOGETHER_TELEMETRY_DISABLED": "1",
            "TOGETHER_DISABLE_VERSION_CHECK": "1",
            "CI": "1",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            **env_extra,
        })
        self.env = env

    def __call__(self, *args: str, json_output: bool = True) -> Result:
        argv = ["--json" if json_output else "--no-json", *args]
        try:
            proc = subprocess.run([self.exe, *argv], env=self.env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT_S, cwd=self.env["HOME"])
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"`tg {' '.join(argv)}` did not finish in {CALL_TIMEOUT_S} s\n"
                                 f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n"
                                 f"server log:\n{self.server.log_tail()}") from None
        return Result(argv, proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, json_output: bool = True) -> Any:
        result = self(*args, json_output=json_output)
        assert result.rc == 0, f"`tg {' '.join(result.args)}` failed:\n{result}\n{self.server.log_tail()}"
        return result.json() if json_output else result.stdout


def new_key(server: Server, owner: str) -> str:
    with server.client() as c:
        resp = c.post("/v1/keys", json={"owner": owner})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


@pytest.fixture(scope="module")
def tg3(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Tg3:
    cli = Tg3(server, tmp_path_factory.mktemp("tg3-home"), new_key(server, "tess"))
    version = subprocess.run([cli.exe, "--version"], env=cli.env, capture_output=True, text=True,
                             timeout=CALL_TIMEOUT_S)
    if version.stdout.strip() != TG3_VERSION:
        pytest.fail(f"expected tg {TG3_VERSION}, found {version.stdout.strip()!r} {version.stderr.strip()}; "
                    "run `make clients`", pytrace=False)
    return cli


def test_tg3_whoami_shows_the_owners_project_and_the_organization(tg3: Tg3) -> None:
    me = tg3.ok("whoami")
    assert me["type"] == "project_api_key"
    assert me["project"] == {"id": "proj_tess", "name": "tess", "slug": "tess"}
    assert me["organization"] == {"id": "org_dedicate", "name": "dedicate"}
    text = tg3.ok("whoami", json_output=False)
    assert "tess (proj_tess)" in text and "dedicate (org_dedicate)" in text, text


def test_tg3_projects_list_shows_the_callers_project(tg3: Tg3) -> None:
    page = tg3.ok("projects", "list")
    assert [p["id"] for p in page["data"]] == ["proj_tess"]
    assert page["data"][0]["organization_name"] == "dedicate"
    text = tg3.ok("projects", "list", json_output=False)
    assert "proj_tess" in text and "(current)" in text, text


def test_tg3_models_public_lists_the_demo_model_with_its_cpu_profile(tg3: Tg3) -> None:
    found = tg3.ok("models", "public", "--search", MODEL)
    assert [m["name"] for m in found["data"]] == [MODEL]
    (profile,) = [p for p in found["data"][0]["deploymentProfiles"] if p["gpuType"] == "cpu"]
    assert profile["modelName"] == MODEL and profile["gpuCount"] == 1
    text = tg3.ok("models", "public", "--product", "dedicated", "--modality", "text", json_output=False)
    assert MODEL in text and "1x Cpu" in text, text


def test_tg3_models_configs_lists_the_shapes_of_a_model(tg3: Tg3) -> None:
    configs = tg3.ok("models", "configs", MODEL)
    data = configs["data"] if isinstance(configs, dict) else configs
    selectors = [{s["key"]: s["value"] for s in c["selectors"]} for c in data]
    assert {"accelerator_type": "cpu", "accelerator_count": "1", "hardware": "1x_cpu",
            "engine": "transformers"} in selectors, configs


def test_tg3_with_a_bad_key_fails_on_authentication(server: Server, tmp_path: Path) -> None:
    bad = Tg3(server, tmp_path / "bad", "ddc_not_a_real_key")
    result = bad("whoami")
    assert result.rc != 0, str(result)
    assert "401" in result.stdout + result.stderr, str(result)
