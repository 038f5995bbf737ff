#!/usr/bin/env bash
# GPU smoke test: on a machine with NVIDIA GPUs and vLLM installed, run dedicate for real on them.
#
# Four phases, each its own `dedicate up` on a fresh data directory:
#   local  + vllm          local  + transformers (CUDA)
#   ray    + vllm          ray    + transformers (CUDA)   (a one-node Ray cluster started here)
# Each deploys dedicate/tiny-chat (built offline by dedicate: nothing comes from a hub) on one GPU,
# sends streamed chat completions through the gateway, stops the endpoint, and prints the time to
# ready, tokens per second and what the run was billed. The last line is a JSON object of it all.
#
#   bash scripts/gpu-smoke.sh            # from the repository root, after `make setup`
#   PHASES="local:vllm ray:vllm" bash scripts/gpu-smoke.sh
#
# Exit 2: no GPU or no vLLM here (says which); exit 1: a phase failed (its server log is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PHASES="${PHASES:-local:vllm local:transformers ray:vllm ray:transformers}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-smoke: needs an NVIDIA GPU (nvidia-smi -L found none)" >&2; exit 2
fi
if ! "$PY" -c "import dedicate" >/dev/null 2>&1; then
  echo "gpu-smoke: $PY cannot import dedicate; run make setup first" >&2; exit 2
fi
if [[ "$PHASES" == *vllm* ]] && ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  echo "gpu-smoke: vLLM is not installed in $PY's environment (pip install vllm), or drop its phases: " \
       "PHASES=\"local:transformers ray:transformers\"" >&2; exit 2
fi

WORK="$(mktemp -d /tmp/dedicate-gpu-smoke.XXXXXX)"
export RAY_USAGE_STATS_ENABLED=0 RAY_TMPDIR="$WORK/ray"
mkdir -p "$RAY_TMPDIR"
cleanup() { "$PY" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true; }
trap cleanup EXIT

exec "$PY" - "$WORK" $PHASES <<'PYTHON'
import json, os, signal, subprocess, sys, time
from pathlib import Path

import httpx

work, phases = Path(sys.argv[1]), sys.argv[2:]
py = sys.executable
MODEL = "dedicate/tiny-chat"

# What this machine's GPUs are, as dedicate names them (NVML through dedicate's own discovery).
from dedicate.domain.hardware import gpu_hardware_id
from dedicate.runtimes.nvml import discover_gpus

gpus = discover_gpus()
if not gpus:
    sys.exit("gpu-smoke: NVML found no GPU")
gpu_type = gpus[0].gpu_type
shape = gpu_hardware_id(gpu_type, "sxm", 1)  # the transformers engine on CUDA: torch picks the GPU it is given
print(f"gpu-smoke: {len(gpus)} GPU(s), type {gpu_type}; shape {shape}", flush=True)
ray_started = False


def config(runtime: str, engine: str) -> str:
    text = f"""
[cpu]
slots = 0

[[models]]
name = "{MODEL}"
params_b = 0.0005
context_length = 2048
num_layers = 2
num_kv_heads = 2
head_dim = 16
dtype = "float32"
engines = ["{engine}"]
source = "builtin:tiny-chat"

[[hardware]]
id = "{shape}"
cents_per_minute = 10
engine = "{engine}"

[timing]
reconcile_interval_s = 0.5
"""
    if runtime == "ray":
        text += f"""
[runtime]
kind = "ray"
address = "127.0.0.1:6379"
node_ip_address = "127.0.0.1"
namespace = "gpu-smoke-{engine}"
"""
    return text


def start_ray() -> None:
    global ray_started
    if ray_started:
        return
    subprocess.run([py, "-m", "ray.scripts.scripts", "start", "--head", "--port=6379",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--num-gpus={len(gpus)}",
                    f"--labels=dedicate.io/gpu-type={gpu_type}"], check=True, stdout=subprocess.DEVNULL)
    ray_started = True


def phase(runtime: str, engine: str) -> dict[str, object]:
    if runtime == "ray":
        start_ray()
    data = work / f"{runtime}-{engine}"
    data.mkdir(parents=True)
    (data / "config.toml").write_text(config(runtime, engine))
    env = {**os.environ, "DEDICATE_DATA_DIR": str(data), "DEDICATE_CONFIG": str(data / "config.toml"),
           "DEDICATE_PORT": "0"}
    log = open(data / "server.log", "ab")
    server = subprocess.Popen([py, "-m", "dedicate.cli.main", "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((data / "port").exists() and (data / "admin.key").exists()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{(data / 'port').read_text().strip()}"
        key = (data / "admin.key").read_text().strip()
        c = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)
        while True:
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        t0 = time.monotonic()
        made = c.post("/v1/endpoints", json={"model": MODEL, "hardware": shape,
                                             "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
        if made.status_code != 200:
            raise RuntimeError(f"create: {made.status_code} {made.text}")
        ep = made.json()
        while True:
            got = c.get(f"/v1/endpoints/{ep['id']}").json()
            if got["state"] == "STARTED":
                break
            if got["state"] == "ERROR" or time.monotonic() - t0 > 900:
                raise RuntimeError(f"not ready: {got['state']}: {got['status_message']}")
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        tokens, spent = 0, 0.0
        for _ in range(5):
            s0 = time.monotonic()
            with c.stream("POST", "/v1/chat/completions", json={
                    "model": ep["name"], "stream": True, "max_tokens": 256, "temperature": 1.0,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "Tell me a long story."}]}) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"completion: {resp.status_code} {resp.read()!r}")
                for line in resp.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage") or {}
                        tokens += int(usage.get("completion_tokens") or 0)
            spent += time.monotonic() - s0
        time.sleep(61)  # a whole billed minute at least
        c.patch(f"/v1/endpoints/{ep['id']}", json={"state": "STOPPED"})
        while c.get(f"/v1/endpoints/{ep['id']}").json()["state"] != "STOPPED":
            time.sleep(0.5)
        usage = c.get("/v1/billing/usage").json()
        return {"phase": f"{runtime}:{engine}", "ready_s": round(ready_s, 1),
                "tokens_per_s": round(tokens / spent, 1) if spent else 0.0, "completion_tokens": tokens,
                "billed": usage}
    except Exception as exc:
        print(f"gpu-smoke: {runtime}:{engine} failed: {exc}\n--- server log ---", file=sys.stderr)
        print((data / "server.log").read_text()[-6000:], file=sys.stderr)
        return {"phase": f"{runtime}:{engine}", "error": str(exc)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


results = []
for p in phases:
    runtime, _, engine = p.partition(":")
    r = phase(runtime, engine)
    results.append(r)
    if "error" not in r:
        print(f"gpu-smoke: {r['phase']}: ready in {r['ready_s']} s, {r['tokens_per_s']} tokens/s, "
              f"billed {json.dumps(r['billed'])[:300]}", flush=True)
print(json.dumps({"gpu_type": gpu_type, "gpus": len(gpus), "phases": results}))
sys.exit(1 if any("error" in r for r in results) else 0)
PYTHON
