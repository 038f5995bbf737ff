"""The CLI finds the server as `dedicate up` does: the config file's data_dir, host and port count."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dedicate.cli.main import main


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nobody listens on (bound, never listening), so a call fails at once, naming the URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_dedicate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DEDICATE_")]:
        monkeypatch.delenv(name)


def run(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output  # stdout and stderr, as a terminal shows them


def test_the_data_dir_of_the_config_file_gives_the_port_file_and_the_admin_key(
    tmp_path: Path, closed_port: int
) -> None:
    data = tmp_path / "state"
    data.mkdir()
    (data / "port").write_text(f"{closed_port}\n")
    (data / "admin.key").write_text("ddc_admin\n")
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(f'[server]\ndata_dir = "{data}"\nhost = "0.0.0.0"\n')
    code, out = run("models", DEDICATE_CONFIG=str(cfg))
    assert code == 1
    assert f"cannot reach dedicate at http://127.0.0.1:{closed_port}" in out, out
    assert "no API key" not in out


def test_without_a_port_file_the_configured_host_and_port(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "admin.key").write_text("ddc_admin\n")
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(f'[server]\ndata_dir = "."\nhost = "127.0.0.1"\nport = {closed_port}\n')
    code, out = run("models", DEDICATE_CONFIG=str(cfg))
    assert code == 1 and f"cannot reach dedicate at http://127.0.0.1:{closed_port}" in out, out


def test_the_environment_wins_over_the_file_for_the_cli_too(tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "admin.key").write_text("ddc_admin\n")
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[server]\ndata_dir = "file"\nport = 1\n')
    code, out = run("models", DEDICATE_CONFIG=str(cfg), DEDICATE_DATA_DIR=str(tmp_path / "env"),
                    DEDICATE_PORT=str(closed_port))
    assert code == 1 and f"cannot reach dedicate at http://127.0.0.1:{closed_port}" in out, out


def test_the_admin_key_is_looked_for_in_the_config_file_s_data_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[server]\ndata_dir = "state"\n')
    code, out = run("models", DEDICATE_CONFIG=str(cfg))
    assert code == 1 and f"{tmp_path / 'state' / 'admin.key'} holds the admin key" in out, out


def test_a_bad_config_file_is_a_config_error_for_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[server]\ndata_dri = "state"\n')
    code, out = run("models", DEDICATE_CONFIG=str(cfg))
    assert code == 1 and f"error: config: {cfg}: [server] unknown setting 'data_dri'" in out, out
    code, out = run("models", DEDICATE_CONFIG=str(cfg), DEDICATE_URL="http://127.0.0.1:1", DEDICATE_API_KEY="k")
    assert "cannot reach dedicate at http://127.0.0.1:1" in out, "with a URL and a key, the file is not read"
