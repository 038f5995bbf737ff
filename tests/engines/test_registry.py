"""The engine registry: one entry per engine, options checked at start-up, no engine names elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dedicate.engines.registry import ENGINES, EngineLaunch, OptionError, engine
from dedicate.settings import ConfigError, load_settings

SRC = Path(__file__).resolve().parents[2] / "src" / "dedicate"


def settings_with(tmp_path: Path, toml: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "d")})


def test_every_engine_has_one_registry_entry() -> None:
    assert set(ENGINES) == {"transformers", "vllm", "synthetic"}
    with pytest.raises(KeyError, match="unknown engine 'tgi'"):
        engine("tgi")


def test_an_unknown_engine_option_fails_at_start_up_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engines\.synthetic: unknown option\(s\) max_stream;.*max_streams"):
        settings_with(tmp_path, "[engines.synthetic]\nmax_stream = 4\n")


def test_an_engine_option_of_the_wrong_type_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engines\.transformers\.max_concurrency: must be a whole number"):
        settings_with(tmp_path, "[engines.transformers]\nmax_concurrency = \"many\"\n")
    with pytest.raises(ConfigError, match=r"engines\.synthetic\.max_streams: must be at least 1"):
        settings_with(tmp_path, "[engines.synthetic]\nmax_streams = 0\n")
    with pytest.raises(ConfigError, match=r"engines\.vllm\.enforce_eager: must be true or false"):
        settings_with(tmp_path, "[engines.vllm]\nenforce_eager = \"yes\"\n")


def test_an_unknown_engine_table_or_enabled_name_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[engines\.tgi\]: unknown engine"):
        settings_with(tmp_path, "[engines.tgi]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"engines\.enabled: unknown engine 'tgi'"):
        settings_with(tmp_path, "[engines]\nenabled = [\"tgi\"]\n")


def test_checked_options_reach_the_command_line_typed(tmp_path: Path) -> None:
    options = engine("synthetic").check_options({"max_streams": 4, "ttft_s": "0.5", "fail_after_start": True})
    assert options == {"max_streams": 4, "ttft_s": 0.5, "fail_after_start": True}
    argv = engine("synthetic").command(EngineLaunch(None, "admin/x", "r-1", "i", tmp_path / "port",
                                                    host="10.0.0.7", options=options), python="py")
    assert argv[argv.index("--max-streams") + 1] == "4" and "--fail-after-start" in argv
    assert argv[argv.index("--host") + 1] == "10.0.0.7", "the runtime chooses where the engine binds"
    with pytest.raises(OptionError):
        engine("synthetic").check_options({"max_streams": 2.5})


def test_only_the_registry_compares_engine_names() -> None:
    name = r"""["'](synthetic|transformers|vllm)["']"""
    pattern = re.compile(rf"[!=]= *{name}|{name} *[!=]=|in \(({name}, *)+")
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if p.name != "registry.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
