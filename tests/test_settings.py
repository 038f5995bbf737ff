"""Settings: a TOML file named by DEDICATE_CONFIG, overridden by environment variables."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest

from dedicate.domain.catalog import DEFAULT_MODELS
from dedicate.settings import ConfigError, ConfigFile, Location, Settings, load_settings, locate

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


def test_ready_replicas_are_probed_every_ten_seconds_unless_timing_says_otherwise(tmp_path: Path) -> None:
    assert settings_with(tmp_path, "").probe_interval_s == 10.0
    assert settings_with(tmp_path, "[timing]\nprobe_interval_s = 0\n").probe_interval_s == 0.0
    with pytest.raises(ConfigError, match="probe_interval_s"):
        settings_with(tmp_path, "[timing]\nprobe_interval_s = -1\n")


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
    assert str(exc.value).startswith(f"{tmp_path / 'dedicate.toml'}: models[0]:")
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


# every table refuses keys it does not know, naming the file, the table and the key -------------

MODEL = ('[[models]]\nname = "acme/x"\nparams_b = 1\ncontext_length = 1024\nnum_layers = 2\nnum_kv_heads = 2\n'
         'head_dim = 64\n')

# (the table, a file with a typo in it, what the message says)
UNKNOWN_KEYS = [
    ("top level", "[sever]\nport = 1\n", "unknown table 'sever' (did you mean 'server'?); the config file has: "
                                         "[autoscaling], [cpu], [engines], [gateway], [gpu], [[hardware]], "
                                         "[[models]], [[nodes]], [runtime], [server], [timing]"),
    ("server", '[server]\ndata_dri = "/srv"\n',
     "[server] unknown setting 'data_dri' (did you mean 'data_dir'?); known: availability_zones, data_dir, "
     "database_url, host, max_upload_bytes, organization, port"),
    ("cpu", "[cpu]\nslot = 2\n", "[cpu] unknown setting 'slot' (did you mean 'slots'?); known: cents_per_minute"),
    ("timing", "[timing]\nreconcile_s = 1\n", "[timing] unknown setting 'reconcile_s'"),
    ("gpu", "[gpu]\ndiscovery = false\n", "[gpu] unknown setting 'discovery' (did you mean 'discover'?)"),
    ("hardware", '[[hardware]]\nid = "1x_cpu"\ncents_per_minute = 1\n\n[[hardware]]\nid = "1x_cpu"\nprice = 2\n'
                 'cents_per_minute = 2\n', "hardware[1] unknown setting 'price'; known: cents_per_minute, engine, id"),
    ("models", MODEL + "contxt_length = 9\n", "models[0] unknown setting 'contxt_length'"),
    ("nodes", '[[nodes]]\nname = "a"\ngpu_type = "h100-80gb"\ngpu = 2\n',
     "nodes[0] unknown setting 'gpu' (did you mean 'gpus'?); known: engine, gpu_type, gpus, name"),
    ("gateway", "[gateway]\nhold = 1\nqueue = 2\n", "[gateway] unknown settings 'hold' (did you mean 'hold_s'?), "
                                                   "'queue' (did you mean 'queue_size'?); known: body_timeout_s, "
                                                   "connect_timeout_s"),
    ("autoscaling", "[autoscaling]\nstabilisaton_s = 60\n",
     "[autoscaling] unknown setting 'stabilisaton_s' (did you mean 'stabilisation_s'?)"),
    ("runtime", '[runtime]\nkind = "ray"\nadress = "h:6379"\n',
     "[runtime] unknown setting 'adress' (did you mean 'address'?)"),
    ("engines", '[engines]\nenable = ["vllm"]\n', "[engines.enable]: unknown engine; dedicate has: "),
    ("engines.synthetic", "[engines.synthetic]\nmax_stream = 4\n",  # tests/engines/test_registry.py: the rest
     "engines.synthetic: unknown option(s) max_stream; the synthetic engine accepts: "),
]


@pytest.mark.parametrize(("table", "toml", "says"), UNKNOWN_KEYS, ids=[u[0] for u in UNKNOWN_KEYS])
def test_an_unknown_key_in_any_table_is_refused_naming_the_file_table_and_key(
    tmp_path: Path, table: str, toml: str, says: str
) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")})
    assert str(exc.value).startswith(f"{cfg}: {says}"), str(exc.value)


def test_the_unknown_key_cases_cover_every_table_of_the_file() -> None:
    tables = {t.split(".")[0] for t, _, _ in UNKNOWN_KEYS}
    assert tables == {"top level", *ConfigFile.model_fields}


def test_a_bad_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    for toml, says in (('[cpu]\nslots = "many"\n', "cpu.slots: 'many' is not a whole number"),
                       ("[server]\nport = 70000\n", "server.port: must be at most 65535, got 70000"),
                       ("[server]\nhost = 1\n", "server.host: must be a string, got 1"),
                       ("[timing]\nreconcile_interval_s = 0\n",
                        "timing.reconcile_interval_s: must be positive, got 0.0"),
                       ("server = 1\n", "[server] must be a table"),
                       ('[hardware]\nid = "1x_cpu"\n', "hardware: must be an array of tables, written [[hardware]]"),
                       ('[cpu]\ncents_per_minute = "-1"\n', "cpu.cents_per_minute: a price cannot be negative"),
                       ('[[nodes]]\nname = "a"\ngpus = 2\n', "nodes[0]: needs 'gpu_type'; every [[nodes]] entry "
                                                            "needs name, gpu_type")):
        cfg.write_text(toml)
        with pytest.raises(ConfigError) as exc:
            load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")})
        assert str(exc.value) == f"{cfg}: {says}"


def test_every_mistake_of_a_file_is_told_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[server]\nprot = 1\n[cpu]\nslots = -1\n[gateway]\nmax_tries = 0\n')
    with pytest.raises(ConfigError) as exc:
        load_settings({"DEDICATE_CONFIG": str(cfg)})
    lines = str(exc.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{cfg}: ") for line in lines)
    assert "[server] unknown setting 'prot'" in lines[0]
    assert "cpu.slots: must be at least 0, got -1" in lines[1]
    assert "gateway.max_tries: must be at least 1, got 0" in lines[2]


def test_an_engine_option_is_checked_at_start_up_naming_the_file(tmp_path: Path) -> None:
    # The registry's own messages are in tests/engines/test_registry.py; here, the file is named too.
    with pytest.raises(ConfigError, match=r"dedicate\.toml: engines\.synthetic\.max_streams: must be at least 1"):
        settings_with(tmp_path, "[engines.synthetic]\nmax_streams = 0\n")


def test_the_documented_example_config_is_accepted_and_shows_every_table() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    example = doc.split("## The config file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    tables = {line.split("]")[0].strip("[").split(".")[0] for line in example.splitlines() if line.startswith("[")}
    assert tables == set(ConfigFile.model_fields)
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "example.toml"
        cfg.write_text(example.replace('data_dir = "/srv/dedicate"', f'data_dir = "{d}/data"'))
        s = load_settings({"DEDICATE_CONFIG": str(cfg)})
    assert s.availability_zones == ("local",) and s.gpu.discover is True
    assert s.engine_options["synthetic"]["max_streams"] == 16


def test_dedicate_up_with_a_bad_config_exits_with_the_message(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[server]\ndata_dri = "/srv"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEDICATE_")}
    out = subprocess.run([sys.executable, "-m", "dedicate.cli.main", "up"], capture_output=True, text=True,
                         env={**env, "DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "d")},
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: config: {cfg}: [server] unknown setting 'data_dri'"), out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists(), "nothing is started or written"


# typed tables that replaced the raw dict ---------------------------------------------------------


def test_gpu_discover_must_be_true_or_false(tmp_path: Path) -> None:
    # Moved from tests/runtimes/test_nvml.py: the runtime now gets a plain bool.
    assert settings_with(tmp_path, "").gpu.discover is True
    assert settings_with(tmp_path, "[gpu]\ndiscover = false\n").gpu.discover is False
    with pytest.raises(ConfigError, match=r"gpu\.discover: must be true or false"):
        settings_with(tmp_path, '[gpu]\ndiscover = "no"\n')


def test_availability_zones_are_a_typed_server_setting(tmp_path: Path) -> None:
    assert settings_with(tmp_path, "").availability_zones == ("local",)
    s = settings_with(tmp_path, '[server]\navailability_zones = ["eu-1", "eu-2"]\n')
    assert s.availability_zones == ("eu-1", "eu-2")
    with pytest.raises(ConfigError, match=r"server\.availability_zones: must not be empty"):
        settings_with(tmp_path, "[server]\navailability_zones = []\n")
    with pytest.raises(ConfigError, match=r"server\.availability_zones\[1\]: must be a string"):
        settings_with(tmp_path, '[server]\navailability_zones = ["a", 2]\n')
    assert not hasattr(s, "extra"), "no raw config dict reaches the control layer"


# where the server is: one answer for `dedicate up` and the CLI -----------------------------------


def test_a_relative_data_dir_in_the_file_is_taken_from_the_file_s_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "dedicate.toml"
    cfg.write_text('[server]\ndata_dir = "../state"\n')
    monkeypatch.chdir("/")
    assert load_settings({"DEDICATE_CONFIG": str(cfg)}).data_dir == (tmp_path / "state").resolve()


@pytest.mark.parametrize(("toml", "env"), [
    ("", {}),
    ('[server]\ndata_dir = "from-file"\nhost = "0.0.0.0"\nport = 9100\n', {}),
    ('[server]\ndata_dir = "from-file"\nport = 9100\n', {"DEDICATE_PORT": "9200", "DEDICATE_HOST": "10.0.0.1"}),
    ('[server]\ndata_dir = "from-file"\n', {"DEDICATE_DATA_DIR": "from-env"}),
])
def test_locate_answers_as_load_settings_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(CPU + toml)
    env = {"DEDICATE_CONFIG": str(cfg), **env}
    s, place = load_settings(env), locate(env)
    assert (place.data_dir, place.host, place.port, place.config_path) == (s.data_dir, s.host, s.port, cfg)
    assert s.config_path == cfg


def test_locate_without_a_config_file_uses_the_environment_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locate({}) == Location(None, (tmp_path / ".local/share/dedicate").resolve(), "127.0.0.1", 8700)
    with pytest.raises(ConfigError, match="DEDICATE_PORT: 'x' is not a whole number"):
        locate({"DEDICATE_PORT": "x"})


def test_locate_checks_the_whole_file_as_dedicate_up_does(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text("[gateway]\nhold = 1\n")
    with pytest.raises(ConfigError, match=r"\[gateway\] unknown setting 'hold'"):
        locate({"DEDICATE_CONFIG": str(cfg)})


def test_the_client_url_is_the_written_port_on_a_dialable_host(tmp_path: Path) -> None:
    assert Location(None, tmp_path, "127.0.0.1", 8700).client_url() == "http://127.0.0.1:8700"
    assert Location(None, tmp_path, "0.0.0.0", 8700).client_url() == "http://127.0.0.1:8700"
    assert Location(None, tmp_path, "::", 8700).client_url() == "http://[::1]:8700"
    assert Location(None, tmp_path, "10.1.2.3", 9000).client_url() == "http://10.1.2.3:9000"
    (tmp_path / "port").write_text("41234\n")  # the port the running server got (port = 0 picks one)
    assert Location(None, tmp_path, "0.0.0.0", 0).client_url() == "http://127.0.0.1:41234"


def test_the_organization_is_a_name_fit_for_an_id_and_defaults_to_dedicate(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    env = {"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")}
    cfg.write_text("")
    assert load_settings(env).organization == "dedicate"
    cfg.write_text('[server]\norganization = "acme-ml"\n')
    assert load_settings(env).organization == "acme-ml"
    cfg.write_text('[server]\norganization = "Acme ML"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert str(exc.value).startswith(f"{cfg}: server.organization: 'Acme ML' is not an organization name"), exc.value


RAY_REFUSALS = [
    ('[runtime]\nkind = "ray"\n', "needs address"),
    ('[runtime]\nkind = "ray"\naddress = "ray://head:10001"\n', "not through Ray Client"),
    ('[runtime]\nkind = "ray"\naddress = "head:6379"\n\n[[nodes]]\nname = "a"\ngpu_type = "h100-80gb"\n',
     "remove the [[nodes]] entries"),
    ('[runtime]\nkind = "kubernetes"\n', "runtime.kind"),
]


@pytest.mark.parametrize(("toml", "says"), RAY_REFUSALS, ids=["no address", "ray client", "nodes", "kind"])
def test_a_runtime_table_that_cannot_work_is_refused_saying_what_to_change(
    tmp_path: Path, toml: str, says: str
) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")})
    assert says in str(exc.value)


def test_the_ray_runtime_is_read_from_its_table(tmp_path: Path) -> None:
    cfg = tmp_path / "dedicate.toml"
    cfg.write_text('[runtime]\nkind = "ray"\naddress = "10.0.0.1:6379"\nnamespace = "team-a"\n'
                   'placement_timeout_s = 30\n')
    s = load_settings({"DEDICATE_CONFIG": str(cfg), "DEDICATE_DATA_DIR": str(tmp_path / "data")})
    assert (s.runtime.kind, s.runtime.address, s.runtime.namespace, s.runtime.placement_timeout_s) == \
        ("ray", "10.0.0.1:6379", "team-a", 30.0)
    assert load_settings({"DEDICATE_DATA_DIR": str(tmp_path / "d2")}).runtime.kind == "local"
