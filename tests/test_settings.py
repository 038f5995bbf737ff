"""Settings: a TOML file named by DEDICATE_CONFIG, overridden by environment variables."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dedicate.domain.catalog import DEFAULT_MODELS
from dedicate.settings import ConfigError, Settings, load_settings

# A fixed CPU section keeps the catalog independent of the machine running the tests.
CPU = "[cpu]\nslots = 2\nslot_memory_gb = 12\n"


def settings_with(tmp_path: Path, toml: str, **env: str) -> Settings:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(CPU + toml)
    return load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data"), **env})


# defaults and environment -----------------------------------------------------------------------


def test_defaults_listen_on_loopback_port_8700_with_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings({})
    assert s.host == "127.0.0.1"
    assert s.port == 8700
    assert s.data_dir == (tmp_path / ".local/share/dedicate").resolve()
    assert s.database_url == f"sqlite:///{s.data_dir / 'dedicate.db'}"
    assert s.replicas_dir == s.data_dir / "replicas"
    assert s.models_dir == s.data_dir / "models"


def test_default_database_url_follows_the_data_dir(tmp_path: Path) -> None:
    s = load_settings({"DEDICATE_DATA_DIR": str(tmp_path / "d")})
    assert s.data_dir == (tmp_path / "d").resolve()
    assert s.database_url == f"sqlite:///{(tmp_path / 'd').resolve() / 'dedicate.db'}"


def test_environment_overrides_host_port_data_dir_and_database(tmp_path: Path) -> None:
    s = load_settings(
        {
            "DEDICATE_HOST": "0.0.0.0",
            "DEDICATE_PORT": "9001",
            "DEDICATE_DATA_DIR": str(tmp_path / "elsewhere"),
            "DEDICATE_DATABASE_URL": "postgresql+psycopg://u@db/dedicate",
        }
    )
    assert (s.host, s.port) == ("0.0.0.0", 9001)
    assert s.data_dir == (tmp_path / "elsewhere").resolve()
    assert s.database_url == "postgresql+psycopg://u@db/dedicate"


def test_port_zero_is_accepted_to_pick_a_free_port(tmp_path: Path) -> None:
    assert load_settings({"DEDICATE_PORT": "0", "DEDICATE_DATA_DIR": str(tmp_path)}).port == 0


def test_data_dir_with_a_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings({"DEDICATE_DATA_DIR": "~/dd"})
    assert s.data_dir == (tmp_path / "dd").resolve()


def test_empty_environment_values_fall_back_to_defaults(tmp_path: Path) -> None:
    s = load_settings({"DEDICATE_DATA_DIR": str(tmp_path), "DEDICATE_PORT": "", "DEDICATE_HOST": ""})
    assert (s.host, s.port) == ("127.0.0.1", 8700)


def test_the_process_environment_is_not_read_when_an_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEDICATE_PORT", "1234")
    assert load_settings({"DEDICATE_DATA_DIR": str(tmp_path)}).port == 8700


def test_default_catalog_holds_the_default_models_and_cpu_slot(tmp_path: Path) -> None:
    s = settings_with(tmp_path, "")
    assert set(s.catalog.models) == {m.name for m in DEFAULT_MODELS}
    cpu = s.catalog.get_hardware("1x_cpu")
    assert (cpu.gpu_memory_gb, cpu.cents_per_minute, cpu.engine) == (12, Decimal("0.05"), "transformers")
    assert (s.cpu_slots, s.cpu_slot_memory_gb) == (2, 12)


# the TOML file ----------------------------------------------------------------------------------


def test_server_section_sets_host_port_and_database(tmp_path: Path) -> None:
    s = settings_with(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9100\ndatabase_url = "sqlite:///x.db"\n')
    assert (s.host, s.port, s.database_url) == ("0.0.0.0", 9100, "sqlite:///x.db")


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9100\n', DEDICATE_PORT="9200", DEDICATE_HOST="10.0.0.1"
    )
    assert (s.host, s.port) == ("10.0.0.1", 9200)


def test_file_data_dir_is_used_without_the_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(CPU + f'[server]\ndata_dir = "{tmp_path / "from-file"}"\n')
    s = load_settings({"DEDICATE_CONFIG": str(cfg)})
    assert s.data_dir == (tmp_path / "from-file").resolve()


def test_hardware_entry_adds_a_shape_with_its_decimal_price_and_engine(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        """
[[hardware]]
id = "2x_nvidia_rtx4090_24gb_pcie"
cents_per_minute = 1.10
engine = "synthetic"
""",
    )
    hw = s.catalog.get_hardware("2x_nvidia_rtx4090_24gb_pcie")
    assert hw.cents_per_minute == Decimal("1.1")
    assert isinstance(hw.cents_per_minute, Decimal)
    assert (hw.gpu_type, hw.gpu_link, hw.gpu_memory_gb, hw.gpu_count) == ("rtx4090-24gb", "pcie", 24, 2)
    assert hw.engine == "synthetic"
    assert "synthetic" in s.catalog.engines
    assert "1x_nvidia_h100_80gb_sxm" in s.catalog.hardware  # the defaults stay


def test_hardware_price_given_as_a_string_is_kept_exactly(tmp_path: Path) -> None:
    s = settings_with(tmp_path, '[[hardware]]\nid = "1x_nvidia_h100_80gb_sxm"\ncents_per_minute = "4.125"\n')
    hw = s.catalog.get_hardware("1x_nvidia_h100_80gb_sxm")
    assert hw.cents_per_minute == Decimal("4.125")
    assert hw.engine == "vllm"


def test_hardware_entry_replaces_a_default_shape(tmp_path: Path) -> None:
    s = settings_with(tmp_path, '[[hardware]]\nid = "8x_nvidia_h100_80gb_sxm"\ncents_per_minute = 30\n')
    assert s.catalog.get_hardware("8x_nvidia_h100_80gb_sxm").cents_per_minute == Decimal(30)


def test_cpu_section_sets_the_slot_price_and_engine(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cpu]\nslots = 3\nslot_memory_gb = 5\ncents_per_minute = "0.2"\nengine = "synthetic"\n')
    s = load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path)})
    cpu = s.catalog.get_hardware("1x_cpu")
    assert (s.cpu_slots, cpu.gpu_memory_gb, cpu.cents_per_minute, cpu.engine) == (3, 5, Decimal("0.2"), "synthetic")
    assert "synthetic" in s.catalog.engines


def test_models_entry_adds_a_model(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        """
[[models]]
name = "acme/widget-3B"
params_b = 3.2
context_length = 8192
num_layers = 28
num_kv_heads = 8
head_dim = 128
engines = ["vllm", "synthetic"]
""",
    )
    m = s.catalog.get_model("acme/widget-3B")
    assert (m.params_b, m.context_length, m.num_layers, m.num_kv_heads, m.head_dim) == (3.2, 8192, 28, 8, 128)
    assert m.dtype == "bfloat16"
    assert m.engines == ("vllm", "synthetic")
    assert m.family == "acme/widget-3B"
    assert m.source == "hub"
    assert len(s.catalog.models) == len(DEFAULT_MODELS) + 1


def test_engines_enabled_adds_engines(tmp_path: Path) -> None:
    s = settings_with(tmp_path, '[engines]\nenabled = ["vllm"]\n')
    assert "vllm" in s.catalog.engines


def test_timing_section_sets_the_loop_timings(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        "[timing]\nprobe_failure_threshold = 5\n"
        "max_failures_before_ready = 2\nreconcile_interval_s = 0.5\n",
    )
    assert (s.probe_failure_threshold, s.max_failures_before_ready, s.reconcile_interval_s) == (5, 2, 0.5)


# errors -----------------------------------------------------------------------------------------


def test_bad_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path)})
    assert str(cfg) in str(exc.value)
    assert "not valid TOML" in str(exc.value)


def test_missing_config_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings({"DEDICATE_CONFIG": str(missing), "DEDICATE_DATA_DIR": str(tmp_path)})
    assert str(missing) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_hardware_without_a_price_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hardware\[0\]: needs 'cents_per_minute'"):
        settings_with(tmp_path, '[[hardware]]\nid = "1x_nvidia_h100_80gb_sxm"\n')


def test_hardware_with_a_malformed_id_shows_the_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        settings_with(tmp_path, '[[hardware]]\nid = "h100"\ncents_per_minute = 1\n')
    assert "hardware[0]" in str(exc.value)
    assert "1x_nvidia_h100_80gb_sxm" in str(exc.value)


def test_hardware_with_a_non_numeric_price_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cents_per_minute: 'cheap' is not a number"):
        settings_with(tmp_path, '[[hardware]]\nid = "1x_cpu"\ncents_per_minute = "cheap"\n')


def test_model_missing_a_field_says_which_fields_are_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        settings_with(tmp_path, '[[models]]\nname = "acme/x"\nparams_b = 1\n')
    assert str(exc.value).startswith("models[0]:")
    assert "context_length" in str(exc.value)


def test_model_with_an_unknown_dtype_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]: dtype must be one of"):
        settings_with(
            tmp_path,
            """
[[models]]
name = "acme/x"
params_b = 1
context_length = 1024
num_layers = 2
num_kv_heads = 2
head_dim = 64
dtype = "int3"
""",
        )
