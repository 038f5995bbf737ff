"""The replica model server: OpenAI shapes, auth, streaming, errors, metrics, and the process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from dedicate.engines import transformers_server
from dedicate.engines.transformers_engine import Engine, SamplingParams, TextAssembler, sample_token
from dedicate.engines.transformers_requests import CompletionRequest
from dedicate.engines.transformers_server import build_app

from . import session_demo_model

TOKEN = "test-replica-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVED = "tiny-chat"
HELLO = [{"role": "user", "content": "What is the weather like?"}]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_demo_model(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    torch.set_num_threads(1)
    loaded = Engine(model_dir, SERVED, device="cpu")
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(build_app(engine, TOKEN)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


def chat(client: TestClient, **fields: Any) -> httpx.Response:
    body = {"model": "whatever-the-gateway-sent", "messages": HELLO, "max_tokens": 6, **fields}
    return client.post("/v1/chat/completions", headers=AUTH, json=body)


def complete(client: TestClient, **fields: Any) -> httpx.Response:
    body = {"prompt": "The river in spring", "max_tokens": 5, **fields}
    return client.post("/v1/completions", headers=AUTH, json=body)


def stream_events(client: TestClient, path: str, body: dict[str, Any]) -> list[Any]:
    """POST with stream=true; every SSE payload decoded, with "[DONE]" kept as a string."""
    with client.stream("POST", path, headers=AUTH, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    assert raw.endswith("\n\n")
    events: list[Any] = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def chat_prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def metric_values(client: TestClient) -> dict[str, float]:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# ----------------------------------------------------------------- health and auth


def test_health_needs_no_token(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_is_503_until_the_model_is_loaded(model_dir: Path) -> None:
    unloaded = Engine(model_dir, SERVED, device="cpu")
    client = TestClient(build_app(unloaded, TOKEN))  # no lifespan, so nothing starts loading
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "loading"}
    assert_error(client.post("/v1/chat/completions", headers=AUTH, json={"messages": HELLO}), 503)


def test_failed_load_is_reported(tmp_path: Path) -> None:
    failed = threading.Event()
    broken = Engine(tmp_path / "no-such-model", SERVED, device="cpu")
    with TestClient(build_app(broken, TOKEN, on_load_failure=failed.set)) as client:
        assert failed.wait(30)
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": ""}],
)
def test_token_is_required(client: TestClient, method: str, path: str, headers: dict[str, str]) -> None:
    response = client.request(method, path, headers=headers, json={"prompt": "x"})
    error = assert_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_app_refuses_an_empty_token(engine: Engine) -> None:
    with pytest.raises(ValueError):
        build_app(engine, "")


def test_process_refuses_to_start_without_token(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(transformers_server.TOKEN_ENV, raising=False)
    argv = ["--model-dir", str(model_dir), "--served-model-name", SERVED, "--port", "0"]
    assert transformers_server.main(argv) == 2


# -------------------------------------------------------------------- completions


def test_chat_completion(client: TestClient, tokenizer: Any) -> None:
    response = chat(client, temperature=0)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == SERVED
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == chat_prompt_length(tokenizer, HELLO)
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6


def test_chat_stream_matches_non_stream(client: TestClient, tokenizer: Any) -> None:
    expected = chat(client, temperature=0).json()
    events = stream_events(client, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 6, "temperature": 0})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["model"] == SERVED and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[:-1] == [None] * (len(chunks) - 1)
    assert finishes[-1] == expected["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected["choices"][0]["message"]["content"]


def test_chat_stream_usage_chunk(client: TestClient, tokenizer: Any) -> None:
    body = {
        "messages": HELLO,
        "max_tokens": 4,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    events = stream_events(client, "/v1/chat/completions", body)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] == chat_prompt_length(tokenizer, HELLO)
    assert 1 <= usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion(client: TestClient, tokenizer: Any) -> None:
    response = complete(client, temperature=0)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == SERVED
    [choice] = body["choices"]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("stop", "length")
    prompt_tokens = len(tokenizer("The river in spring")["input_ids"])
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert 1 <= body["usage"]["completion_tokens"] <= 5

    events = stream_events(
        client,
        "/v1/completions",
        {
            "prompt": ["The river in spring"],
            "max_tokens": 5,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
    )
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert usage_chunk["usage"] == body["usage"]


def test_default_max_tokens(client: TestClient) -> None:
    response = client.post("/v1/completions", headers=AUTH, json={"prompt": "Tea", "temperature": 0, "stop": None})
    usage = response.json()["usage"]
    assert usage["completion_tokens"] <= transformers_server.DEFAULT_COMPLETION_MAX_TOKENS


def test_stop_string_cuts_the_reply(client: TestClient) -> None:
    free = complete(client, temperature=0, max_tokens=10).json()["choices"][0]["text"]
    clean = free.replace("\ufffd", "")
    assert len(clean) >= 6, free
    stop = clean[3:6]
    expected = free[: free.find(stop)]
    stopped = complete(client, temperature=0, max_tokens=10, stop=[stop, "never-seen-xyz"]).json()
    assert stopped["choices"][0]["text"] == expected
    assert stopped["choices"][0]["finish_reason"] == "stop"
    events = stream_events(
        client,
        "/v1/completions",
        {"prompt": "The river in spring", "max_tokens": 10, "temperature": 0, "stop": stop},
    )
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_repeatable(client: TestClient) -> None:
    first = complete(client, temperature=1.0, top_p=0.9, seed=1234, max_tokens=8).json()
    second = complete(client, temperature=1.0, top_p=0.9, seed=1234, max_tokens=8).json()
    assert first["choices"] == second["choices"]


def test_content_parts_and_developer_role(client: TestClient, tokenizer: Any) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
    ]
    response = client.post("/v1/chat/completions", headers=AUTH, json={"messages": messages, "max_tokens": 2})
    assert response.status_code == 200
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert response.json()["usage"]["prompt_tokens"] == chat_prompt_length(tokenizer, plain)


def test_max_tokens_is_capped_by_the_context(engine: Engine) -> None:
    body = CompletionRequest(prompt="x")
    params = engine.sampling_params(body, 10**6, 16, prompt_len=engine.context_length - 3)
    assert params.max_tokens == 3


def test_prompt_longer_than_context_is_refused(client: TestClient) -> None:
    response = complete(client, prompt="weather " * 3000)
    assert assert_error(response, 400)["code"] == "context_length_exceeded"


# --------------------------------------------------------------------- bad inputs

_MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b""),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'"just a string"'),
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"messages": "hi"}),
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
        ("/v1/chat/completions", {"messages": _MSG, "n": 2}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": -1}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": 0}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": "10"}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": 2.5}),
        ("/v1/chat/completions", {"messages": _MSG, "temperature": "hot"}),
        ("/v1/chat/completions", {"messages": _MSG, "temperature": -1}),
        ("/v1/chat/completions", {"messages": _MSG, "top_p": 0}),
        ("/v1/chat/completions", {"messages": _MSG, "stream": "yes"}),
        ("/v1/chat/completions", {"messages": _MSG, "stop": 7}),
        ("/v1/chat/completions", {"messages": _MSG, "seed": "abc"}),
        ("/v1/chat/completions", {"messages": _MSG, "seed": 2**70}),
        ("/v1/chat/completions", {"messages": _MSG, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", {"messages": _MSG, "logprobs": True}),
        ("/v1/completions", {}),
        ("/v1/completions", {"prompt": 42}),
        ("/v1/completions", {"prompt": ["a", "b"]}),
        ("/v1/completions", {"prompt": []}),
        ("/v1/completions", {"prompt": "a", "n": 3}),
        ("/v1/completions", {"prompt": "a", "max_tokens": -5}),
        ("/v1/completions", {"prompt": "a", "echo": True}),
        ("/v1/completions", {"prompt": "a", "model": 3}),
    ],
)
def test_bad_input_is_a_400(client: TestClient, path: str, body: bytes | dict[str, Any]) -> None:
    if isinstance(body, bytes):
        response = client.post(path, headers=AUTH, content=body)
    else:
        response = client.post(path, headers=AUTH, json=body)
    assert assert_error(response, 400)["type"] == "invalid_request_error"


def test_unknown_route_is_an_enveloped_404(client: TestClient) -> None:
    assert assert_error(client.get("/v1/nothing-here", headers=AUTH), 404)["code"] == "not_found"


# ------------------------------------------------------------------ models/metrics


def test_models_lists_the_served_name(client: TestClient) -> None:
    body = client.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in body["data"]] == [SERVED]


def test_metrics_count_requests_and_tokens(client: TestClient, tokenizer: Any) -> None:
    before = metric_values(client)
    usage = complete(client, temperature=0, max_tokens=3).json()["usage"]
    after = metric_values(client)
    assert after["dedicate_engine_requests_total"] == before["dedicate_engine_requests_total"] + 1
    assert (
        after["dedicate_engine_prompt_tokens_total"]
        == before["dedicate_engine_prompt_tokens_total"] + usage["prompt_tokens"]
    )
    assert (
        after["dedicate_engine_generation_tokens_total"]
        == before["dedicate_engine_generation_tokens_total"] + usage["completion_tokens"]
    )
    assert after["dedicate_engine_requests_running"] == 0
    assert after["dedicate_engine_requests_waiting"] == 0
    text = client.get("/metrics", headers=AUTH).text
    assert "# TYPE dedicate_engine_requests_running gauge" in text
    assert "# TYPE dedicate_engine_requests_total counter" in text


# ------------------------------------------------------------------- unit pieces


def test_text_assembler_never_leaks_a_stop_string(tokenizer: Any) -> None:
    text = "Rain again, stop here please"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tokenizer, [", stop"])
    pieces = []
    for token in ids:
        piece, stopped = assembler.push(token)
        pieces.append(piece)
        if stopped:
            break
    assert stopped
    assert "".join(pieces) == "Rain again"


def test_text_assembler_holds_back_split_characters(tokenizer: Any) -> None:
    text = "naïve ☕ 日本 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tokenizer, [])
    pieces = [assembler.push(token)[0] for token in ids]
    pieces.append(assembler.finish()[0])
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_sample_token() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0.0, 1.0, generator) == 1
    assert {sample_token(logits, 1.0, 0.01, generator) for _ in range(20)} == {1}
    draws = [sample_token(logits, 1.0, 1.0, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert len(set(draws)) == 1
    params = SamplingParams(max_tokens=1)
    assert params.temperature == 0.0 and params.stop == ()


# -------------------------------------------------------------- the real process


class Replica:
    """A server process started the way the runtime starts one."""

    def __init__(self, model_dir: Path, workdir: Path, *extra: str) -> None:
        self.port_file = workdir / "run" / "port"
        self.log_path = workdir / "replica.log"
        workdir.mkdir(parents=True)
        env = {**os.environ, transformers_server.TOKEN_ENV: TOKEN}
        argv = [
            sys.executable,
            "-m",
            "dedicate.engines.transformers_server",
            "--model-dir",
            str(model_dir),
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--replica-id",
            "rep-1",
            "--instance",
            "inst-1",
            "--device",
            "cpu",
            *extra,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        self.base_url = f"http://127.0.0.1:{self._wait_for_port()}"
        self._wait_until_healthy()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)
        return int(self.port_file.read_text())

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while httpx.get(f"{self.base_url}/health").status_code != 200:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.base_url}/metrics", headers=AUTH).text)

    def wait_for(self, name: str, value: float, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.metrics()[name] != value:
            assert time.monotonic() < deadline, f"{name} never reached {value}: {self.metrics()}"
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def replica_factory(model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Replica] = []

    def start(*extra: str) -> Replica:
        replica = Replica(model_dir, tmp_path / f"r{len(started)}", *extra)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.kill()


def test_process_serves_and_exits_cleanly_on_sigterm(replica_factory: Any) -> None:
    replica = replica_factory("--shutdown-timeout", "1")
    assert httpx.get(f"{replica.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{replica.base_url}/metrics").status_code == 401
    response = httpx.post(
        f"{replica.base_url}/v1/chat/completions",
        headers=AUTH,
        json={"model": "x", "messages": HELLO, "max_tokens": 4},
    )
    assert response.status_code == 200
    assert response.json()["model"] == SERVED
    # SIGTERM while a long stream is in flight: after the grace period the stream
    # ends as a well-formed reply (error event, [DONE]) and the process exits 0.
    with (
        httpx.Client(base_url=replica.base_url, headers=AUTH) as http,
        http.stream(
            "POST",
            "/v1/completions",
            json={"prompt": "Long", "max_tokens": 100000, "stream": True, "temperature": 0},
        ) as stream,
    ):
        lines = stream.iter_lines()  # keep a reference: dropping it closes the connection
        next(lines)
        replica.wait_for("dedicate_engine_requests_running", 1)
        signalled = time.monotonic()
        replica.process.send_signal(signal.SIGTERM)
        rest = [line.removeprefix("data: ") for line in lines if line]
        assert replica.process.wait(20) == 0, replica.log()
    assert time.monotonic() - signalled < 5
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["error"]["code"] == "shutting_down"
    assert "rep-1" in replica.log()


def test_queue_and_disconnects(replica_factory: Any) -> None:
    replica = replica_factory("--max-concurrency", "1")
    url = replica.base_url
    long_stream = {"prompt": "Long", "max_tokens": 100000, "stream": True, "temperature": 0}
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=long_stream) as first:
            lines = first.iter_lines()  # keep a reference: dropping it closes the connection
            next(lines)  # generating: holds the only slot
            replica.wait_for("dedicate_engine_requests_running", 1)
            second: dict[str, httpx.Response] = {}
            waiter = threading.Thread(
                target=lambda: second.update(r=http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}))
            )
            waiter.start()
            replica.wait_for("dedicate_engine_requests_waiting", 1)
        # Leaving the block closes the first stream mid-generation: its slot goes to the second.
        waiter.join(30)
        assert second["r"].status_code == 200
        replica.wait_for("dedicate_engine_requests_running", 0)
        generated = replica.metrics()["dedicate_engine_generation_tokens_total"]
        assert generated < 1500, "the abandoned stream kept generating"

        # A non-streamed request whose client gives up stops too.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", timeout=0.5, json={"prompt": "Long", "max_tokens": 100000, "temperature": 0})
        replica.wait_for("dedicate_engine_requests_running", 0)
        assert replica.metrics()["dedicate_engine_generation_tokens_total"] - generated < 1500
