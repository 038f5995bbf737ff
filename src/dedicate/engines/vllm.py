"""The vLLM adapter: how a replica of the ``vllm`` engine is started, and what its metrics say.

vLLM is too large to install on every machine, so dedicate does not import it.
A replica runs ``python -m dedicate.engines.vllm``: this small launcher picks
a free port on 127.0.0.1, writes it to the port file (as dedicate's own engines
do), and replaces itself with vLLM's OpenAI-compatible server on that port,
with the replica token as its API key. vLLM answers ``/health`` without a key
and ``/v1/*`` only with it, which is the protocol dedicate expects of every
engine; the autoscaler reads its ``vllm:num_requests_waiting`` and
``vllm:gpu_cache_usage_perc`` metrics (``control.autoscaling.parse_engine_metrics``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

TOKEN_ENV = "DEDICATE_REPLICA_TOKEN"
VLLM_SERVER = "vllm.entrypoints.openai.api_server"
# Options from the config's [engines.vllm] table, passed to vLLM as --name value.
PASSTHROUGH = ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "dtype", "tensor_parallel_size",
               "enforce_eager", "quantization")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vllm_argv(*, python: str, model: str, served_model_name: str, host: str, port: int,
              gpu_count: int, options: dict[str, str]) -> list[str]:
    """The vLLM server's command line. The API key travels in the environment (VLLM_API_KEY)."""
    # safetensors only: a pickled checkpoint (*.bin, *.pt) can run code as it loads; and no model's own
    # code runs (vLLM's --trust-remote-code is never passed, and no option can add it).
    argv = [python, "-m", VLLM_SERVER, "--model", model, "--served-model-name", served_model_name,
            "--host", host, "--port", str(port), "--disable-log-requests", "--load-format", "safetensors"]
    options = {"tensor_parallel_size": str(gpu_count), **options}
    for key in PASSTHROUGH:
        if key in options:
            flag = "--" + key.replace("_", "-")
            if key == "enforce_eager":
                if options[key].lower() in ("1", "true", "yes"):
                    argv.append(flag)
            else:
                argv += [flag, options[key]]
    return argv


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dedicate.engines.vllm", description=__doc__)
    p.add_argument("--model", required=True, help="a model directory, or a hub name vLLM fetches itself")
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--gpu-count", type=int, default=1)
    p.add_argument("--option", action="append", default=[], help="NAME=VALUE from [engines.vllm]")
    p.add_argument("--replica-id", default="")
    p.add_argument("--instance", default="")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        print(f"{TOKEN_ENV} is not set", file=sys.stderr)
        return 2
    options = dict(o.split("=", 1) for o in args.option if "=" in o)
    port = free_port(args.host)
    tmp = args.port_file.with_suffix(".tmp")
    args.port_file.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    command = vllm_argv(python=sys.executable, model=args.model, served_model_name=args.served_model_name,
                        host=args.host, port=port, gpu_count=args.gpu_count, options=options)
    env = {**os.environ, "VLLM_API_KEY": token}
    print("starting vLLM:", " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, env)  # replaces this process: same pid, same process group
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
