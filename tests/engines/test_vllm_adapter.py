"""The vLLM adapter, tested on what it builds and parses (vLLM itself is not installed here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dedicate.engines import vllm
from dedicate.engines.metrics import EngineSample, parse_engine_metrics
from dedicate.engines.registry import EngineLaunch, engine

# Lines as vLLM's /metrics writes them (recorded from its Prometheus exposition format).
METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="admin/llama-3-1-8b-instruct-1a2b3c4d"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="admin/llama-3-1-8b-instruct-1a2b3c4d"} 3.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="admin/llama-3-1-8b-instruct-1a2b3c4d"} 0.42
vllm:prompt_tokens_total{model_name="admin/llama-3-1-8b-instruct-1a2b3c4d"} 12345.0
"""


def test_a_hub_model_is_launched_through_dedicates_launcher_with_its_gpu_count(tmp_path: Path) -> None:
    argv = engine("vllm").command(EngineLaunch(
        model_dir=None, served_model_name="admin/llama-1", replica_id="r-1", instance="i",
        port_file=tmp_path / "port", options={"max_model_len": 8192}, model_name="meta-llama/Llama-3.1-8B-Instruct",
        gpu_count=2), python="py")
    assert argv[:3] == ["py", "-m", "dedicate.engines.vllm"]
    assert argv[argv.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert argv[argv.index("--gpu-count") + 1] == "2"
    assert "--option=max_model_len=8192" in argv
    assert argv[-4:] == ["--replica-id", "r-1", "--instance", "i"], "the runtime finds it by these"


def test_a_local_model_directory_wins_over_the_hub_name(tmp_path: Path) -> None:
    argv = engine("vllm").command(EngineLaunch(tmp_path / "weights", "n", "r", "i", tmp_path / "p",
                                               model_name="org/m"))
    assert argv[argv.index("--model") + 1] == str(tmp_path / "weights")


def test_the_vllm_command_line_has_tensor_parallelism_and_no_secret() -> None:
    argv = vllm.vllm_argv(python="py", model="m", served_model_name="admin/x", host="127.0.0.1", port=4321,
                          gpu_count=4, options={"gpu_memory_utilization": "0.85", "enforce_eager": "true",
                                                "unknown": "ignored"})
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert "--enforce-eager" in argv and "unknown" not in " ".join(argv)
    assert "--api-key" not in argv, "the key travels in the environment, not on a readable command line"
    assert argv[argv.index("--load-format") + 1] == "safetensors", "no pickled checkpoint is loaded"
    with_trust = vllm.vllm_argv(python="py", model="m", served_model_name="admin/x", host="127.0.0.1", port=1,
                                gpu_count=1, options={"trust_remote_code": "true", "load_format": "pt"})
    assert "--trust-remote-code" not in with_trust and "pt" not in with_trust, "no option brings them back"


def test_the_launcher_writes_its_port_then_becomes_vllm_with_the_token_as_api_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(vllm.os, "execve", fake_execve)
    monkeypatch.setenv("DEDICATE_REPLICA_TOKEN", "secret-token")
    vllm.main(["--model", "org/m", "--served-model-name", "admin/x", "--port-file", str(tmp_path / "port"),
               "--gpu-count", "2", "--option", "max_num_seqs=64", "--replica-id", "r", "--instance", "i"])
    port = int((tmp_path / "port").read_text())
    argv = seen["argv"]
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--max-num-seqs") + 1] == "64"
    assert seen["env"]["VLLM_API_KEY"] == "secret-token"


def test_the_launcher_refuses_to_start_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEDICATE_REPLICA_TOKEN", raising=False)
    assert vllm.main(["--model", "m", "--served-model-name", "x", "--port-file", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()


def test_vllm_metrics_give_the_autoscaler_waiting_requests_and_kv_cache_use() -> None:
    sample = parse_engine_metrics(METRICS)
    assert (sample.waiting, sample.kv_cache_usage) == (3, 0.42)
    assert parse_engine_metrics("") == EngineSample(None, None)
