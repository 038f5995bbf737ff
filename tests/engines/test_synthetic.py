"""The synthetic engine: the replica protocol with fake tokens, its queue, and the process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dedicate.engines import synthetic
from dedicate.engines.protocol import APIError
from dedicate.engines.synthetic import build_app
from dedicate.engines.synthetic_engine import Admission, SyntheticConfig, SyntheticEngine

TOKEN = "test-replica-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVED = "synthetic-chat"
HELLO = [{"role": "user", "content": "What is the weather like?"}]  # 25 characters: 7 tokens, plus 4


def fast_engine(**overrides: Any) -> SyntheticEngine:
    config = SyntheticConfig(**{"served_model_name": SERVED, "ttft_s": 0.0, "tokens_per_s": 5000.0, **overrides})
    return SyntheticEngine(config)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(fast_engine(), TOKEN)) as test_client:
        yield test_client


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


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """The OpenAI error envelope (TestClient and httpx have distinct response types)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# ----------------------------------------------------------------- health and auth


def test_health_needs_no_token_and_waits_for_the_startup_delay() -> None:
    engine = fast_engine(startup_delay_s=30.0)
    client = TestClient(build_app(engine, TOKEN))
    response = client.get("/health")
    assert (response.status_code, response.json()) == (503, {"status": "loading"})
    error = assert_error(client.post("/v1/completions", headers=AUTH, json={"prompt": "x"}), 503)
    assert (error["type"], error["code"]) == ("server_error", "model_not_ready")
    assert parse_metrics(client.get("/metrics", headers=AUTH).text)["dedicate_engine_model_loaded"] == 0
    engine.started_at -= 30.0
    response = client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["x-synthetic-engine"] == "1"


def test_fail_after_start_is_never_healthy() -> None:
    client = TestClient(build_app(fast_engine(fail_after_start=True), TOKEN))
    assert client.get("/health").status_code == 503


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics")],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_token_is_required(client: TestClient, method: str, path: str, headers: dict[str, str]) -> None:
    response = client.request(method, path, headers=headers, json={"prompt": "x"})
    assert assert_error(response, 401)["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_app_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError):
        build_app(fast_engine(), "")


def test_process_refuses_to_start_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(synthetic.TOKEN_ENV, raising=False)
    assert synthetic.main(["--served-model-name", SERVED, "--port", "0"]) == 2


# -------------------------------------------------------------------- completions


def test_chat_completion(client: TestClient) -> None:
    request = {"model": "whatever-the-gateway-sent", "messages": HELLO, "max_tokens": 3}
    response = client.post("/v1/chat/completions", headers=AUTH, json=request)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["model"]) == ("chat.completion", SERVED)
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "tok1 tok2 tok3"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_chat_prompt_tokens_count_every_message(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},  # 9 characters: 3 + 4
        {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "cde"}]},  # 2 + 4
        {"role": "assistant", "content": None},  # 0 + 4
    ]
    body = client.post("/v1/chat/completions", headers=AUTH, json={"messages": messages, "max_completion_tokens": 1})
    assert body.json()["usage"]["prompt_tokens"] == 17


def test_completion_and_its_defaults(client: TestClient) -> None:
    body = client.post("/v1/completions", headers=AUTH, json={"prompt": ["123456789"]}).json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " ".join(f"tok{i}" for i in range(1, 17))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
    empty = client.post("/v1/completions", headers=AUTH, json={"prompt": "", "max_tokens": 1}).json()
    assert empty["usage"]["prompt_tokens"] == 1


def test_chat_stream_with_usage(client: TestClient) -> None:
    body = {"messages": HELLO, "max_tokens": 3, "stream_options": {"include_usage": True}}
    events = stream_events(client, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["tok1", " tok2", " tok3"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(c["usage"] is None for c in chunks[:5])
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_completion_stream_without_usage(client: TestClient) -> None:
    events = stream_events(client, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ("tok1", None),
        (" tok2", None),
        ("", "length"),
    ]
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)


def test_tokens_follow_the_configured_speed() -> None:
    client = TestClient(build_app(fast_engine(ttft_s=0.2, tokens_per_s=20.0), TOKEN))
    started = time.monotonic()
    response = client.post("/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 3})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.29 <= elapsed < 3.0  # 0.2 s to the first token, then two more 0.05 s apart


def test_prompt_longer_than_the_context_is_refused() -> None:
    client = TestClient(build_app(fast_engine(max_model_len=10), TOKEN))
    error = assert_error(client.post("/v1/completions", headers=AUTH, json={"prompt": "x" * 40}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    capped = client.post("/v1/completions", headers=AUTH, json={"prompt": "x" * 32, "max_tokens": 50}).json()
    assert capped["usage"]["completion_tokens"] == 2


_MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b'"just a string"'),
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"messages": "hi"}),
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}),
        ("/v1/chat/completions", {"messages": ["not an object"]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
        ("/v1/chat/completions", {"messages": _MSG, "n": 2}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": -1}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": 0}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": "10"}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": 2.5}),
        ("/v1/chat/completions", {"messages": _MSG, "max_tokens": True}),
        ("/v1/chat/completions", {"messages": _MSG, "temperature": "hot"}),
        ("/v1/chat/completions", {"messages": _MSG, "temperature": -1}),
        ("/v1/chat/completions", {"messages": _MSG, "top_p": 0}),
        ("/v1/chat/completions", {"messages": _MSG, "stream": "yes"}),
        ("/v1/chat/completions", {"messages": _MSG, "stop": 7}),
        ("/v1/chat/completions", {"messages": _MSG, "seed": "abc"}),
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


def test_bad_input_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", headers=AUTH, json={"messages": [{"content": "no role"}]})
    assert assert_error(response, 400)["param"] == "messages.0.role"
    response = client.post("/v1/completions", headers=AUTH, json={"prompt": "a", "n": 2})
    assert assert_error(response, 400)["param"] == "n"


def test_unknown_route_is_an_enveloped_404(client: TestClient) -> None:
    assert assert_error(client.get("/v1/nothing-here", headers=AUTH), 404)["code"] == "not_found"


def test_models_lists_the_served_name(client: TestClient) -> None:
    body = client.get("/v1/models", headers=AUTH).json()
    assert [(m["id"], m["max_model_len"]) for m in body["data"]] == [(SERVED, 32768)]


def test_metrics_count_requests_and_tokens(client: TestClient) -> None:
    def values() -> dict[str, float]:
        response = client.get("/metrics", headers=AUTH)
        assert response.status_code == 200
        return parse_metrics(response.text)

    before = values()
    response = client.post("/v1/completions", headers=AUTH, json={"prompt": "hello there", "max_tokens": 4})
    usage = response.json()["usage"]
    stream_events(client, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})
    after = values()
    assert after["dedicate_engine_requests_total"] == before["dedicate_engine_requests_total"] + 2
    assert after["dedicate_engine_prompt_tokens_total"] == before["dedicate_engine_prompt_tokens_total"] + 3 + 11
    assert after["dedicate_engine_generation_tokens_total"] == before["dedicate_engine_generation_tokens_total"] + 6
    assert usage["prompt_tokens"] == 3
    assert after["dedicate_engine_requests_running"] == 0
    assert after["dedicate_engine_requests_waiting"] == 0
    assert after["dedicate_engine_max_concurrency"] == 16
    assert after["dedicate_engine_model_loaded"] == 1
    text = client.get("/metrics", headers=AUTH).text
    assert "# TYPE dedicate_engine_requests_running gauge" in text
    assert "# TYPE dedicate_engine_requests_total counter" in text


# ------------------------------------------------------------------ the queue


def test_streams_are_limited_and_the_rest_queue() -> None:
    engine = fast_engine(ttft_s=0.05, tokens_per_s=20.0, max_streams=2)

    async def scenario() -> tuple[list[httpx.Response], list[dict[str, float]]]:
        transport = httpx.ASGITransport(app=build_app(engine, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://replica", headers=AUTH) as http:
            requests = [
                asyncio.ensure_future(http.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 4}))
                for i in range(4)
            ]
            samples: list[dict[str, float]] = []
            while not all(r.done() for r in requests):
                samples.append(parse_metrics((await http.get("/metrics")).text))
                await asyncio.sleep(0.01)
            return [await r for r in requests], samples

    responses, samples = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["usage"]["completion_tokens"] == 4 for r in responses)
    assert max(s["dedicate_engine_requests_running"] for s in samples) == 2
    assert max(s["dedicate_engine_requests_waiting"] for s in samples) >= 1
    assert (engine.admission.running, engine.admission.waiting) == (0, 0)
    assert engine.metrics.generation_tokens_total == 16


def test_a_full_queue_answers_503() -> None:
    engine = fast_engine(ttft_s=0.3, max_streams=1, max_queue=1)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(engine, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://replica", headers=AUTH) as http:
            body = {"prompt": "x", "max_tokens": 1}
            running = asyncio.ensure_future(http.post("/v1/completions", json=body))
            while engine.admission.running < 1:
                await asyncio.sleep(0.005)
            waiting = asyncio.ensure_future(http.post("/v1/chat/completions", json={"messages": HELLO, **body}))
            while engine.admission.waiting < 1:
                await asyncio.sleep(0.005)
            refused = await http.post("/v1/completions", json={**body, "stream": True})
            return [await running, await waiting, refused]

    first, second, refused = asyncio.run(scenario())
    assert (first.status_code, second.status_code) == (200, 200)
    error = assert_error(refused, 503)
    assert (error["type"], error["code"]) == ("server_error", "engine_overloaded")
    assert engine.metrics.requests_total == 2
    assert engine.metrics.requests_rejected_total == 1


def test_admission_is_fifo_and_abandoned_places_are_freed() -> None:
    async def scenario() -> list[str]:
        admission = Admission(max_streams=1, max_queue=10)
        order: list[str] = []
        holder = admission.enter()

        async def request(name: str) -> None:
            ticket = admission.enter()
            try:
                await admission.wait(ticket)
                order.append(name)
                await asyncio.sleep(0.01)
            finally:
                admission.leave(ticket)

        tasks = {name: asyncio.ensure_future(request(name)) for name in "abcd"}
        await asyncio.sleep(0.01)
        assert admission.waiting == 4
        tasks["b"].cancel()  # gives up while queued
        await asyncio.sleep(0.01)
        assert admission.waiting == 3
        admission.leave(holder)
        admission.leave(holder)  # idempotent
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert (admission.running, admission.waiting) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["a", "c", "d"]


def test_closing_a_generation_frees_its_slot() -> None:
    async def scenario() -> None:
        engine = fast_engine(ttft_s=0.0, tokens_per_s=1000.0, max_streams=1)
        ticket = engine.admit(prompt_tokens=5)
        deltas = engine.generate(ticket, max_tokens=1000)
        assert (await anext(deltas)).text == "tok1"
        assert engine.admission.running == 1
        await deltas.aclose()
        assert engine.admission.running == 0
        never_started = engine.admit(prompt_tokens=5)
        engine.admission.leave(never_started)
        assert engine.admission.running == 0

    asyncio.run(scenario())


def test_draining_refuses_the_queue_and_ends_running_work() -> None:
    async def scenario() -> None:
        engine = fast_engine(ttft_s=0.0, tokens_per_s=50.0, max_streams=1)
        engine.attach(asyncio.get_running_loop())
        running = engine.generate(engine.admit(1), max_tokens=100000)
        await anext(running)
        queued = engine.generate(engine.admit(1), max_tokens=1)
        waiter = asyncio.ensure_future(anext(queued))
        await asyncio.sleep(0.01)
        engine.drain(0.1)
        with pytest.raises(APIError) as refused:
            await waiter
        assert refused.value.code == "shutting_down"
        with pytest.raises(APIError) as new:
            engine.admit(1)
        assert new.value.status == 503
        with pytest.raises(APIError) as ended:
            while True:
                await anext(running)
        assert ended.value.code == "shutting_down"
        assert (engine.admission.running, engine.admission.waiting) == (0, 0)

    asyncio.run(scenario())


def test_importing_stays_light() -> None:
    code = (
        "import sys, dedicate.engines.synthetic; "
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'pydantic') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------- the process


class Replica:
    """A synthetic engine process started the way the runtime starts one."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port_file = workdir / "run" / "port"
        self.log_path = workdir / "replica.log"
        workdir.mkdir(parents=True)
        env = {**os.environ, synthetic.TOKEN_ENV: TOKEN}
        argv = [
            sys.executable,
            "-m",
            "dedicate.engines.synthetic",
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
            *extra,
        ]
        self.spawned = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    def wait_for_port(self) -> str:
        deadline = time.monotonic() + 15
        while not self.port_file.exists():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.01)
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def wait_until_healthy(self, base_url: str) -> float:
        deadline = time.monotonic() + 15
        while httpx.get(f"{base_url}/health").status_code != 200:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.01)
        return time.monotonic() - self.spawned

    def metrics(self, base_url: str) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{base_url}/metrics", headers=AUTH).text)

    def wait_until_idle(self, base_url: str) -> None:
        deadline = time.monotonic() + 5
        while self.metrics(base_url)["dedicate_engine_requests_running"] != 0:
            assert time.monotonic() < deadline, "an abandoned request kept its slot"
            time.sleep(0.01)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def replica_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Replica] = []

    def start(*extra: str) -> Replica:
        replica = Replica(tmp_path / f"r{len(started)}", *extra)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.kill()


def test_process_starts_fast_streams_and_exits_cleanly_on_sigterm(replica_factory: Any) -> None:
    replica = replica_factory("--ttft", "0.01", "--tokens-per-s", "200", "--shutdown-timeout", "0.5")
    url = replica.wait_for_port()
    assert replica.wait_until_healthy(url) < 3.0  # typically about 0.3 s
    health = httpx.get(f"{url}/health")
    assert health.json() == {"status": "ok"}
    assert health.headers["x-synthetic-engine"] == "1"
    assert httpx.get(f"{url}/metrics").status_code == 401
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        body = {"prompt": "Hi", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
        with http.stream("POST", "/v1/completions", json=body) as response:
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2]) == "tok1 tok2 tok3"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 3

        # A client that leaves mid-stream frees its slot at once.
        with http.stream("POST", "/v1/completions", json={"prompt": "Long", "max_tokens": 100000, "stream": True}) as s:
            lines = s.iter_lines()  # keep a reference: dropping it closes the connection
            next(lines)
            assert replica.metrics(url)["dedicate_engine_requests_running"] == 1
        replica.wait_until_idle(url)
        # So does a client that gives up on a non-streamed request.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", timeout=0.3, json={"prompt": "Long", "max_tokens": 100000})
        replica.wait_until_idle(url)

        # SIGTERM with a stream in flight: it ends well-formed after the grace, and the process exits 0.
        with http.stream("POST", "/v1/completions", json={"prompt": "Long", "max_tokens": 100000, "stream": True}) as s:
            lines = s.iter_lines()
            next(lines)
            signalled = time.monotonic()
            replica.process.send_signal(signal.SIGTERM)
            rest = [line.removeprefix("data: ") for line in lines if line]
    assert replica.process.wait(10) == 0, replica.log()
    assert time.monotonic() - signalled < 5
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["error"]["code"] == "shutting_down"
    assert "rep-1" in replica.log()


def test_process_startup_delay_and_fail_after_start(replica_factory: Any) -> None:
    delayed = replica_factory("--startup-delay", "0.5")
    failing = replica_factory("--fail-after-start", "--model-dir", "/nonexistent")
    url = delayed.wait_for_port()
    assert httpx.get(f"{url}/health").status_code == 503
    assert delayed.wait_until_healthy(url) >= 0.5

    failing_url = failing.wait_for_port()
    assert httpx.get(f"{failing_url}/health").json() == {"status": "loading"}
    assert failing.process.wait(10) == 3, failing.log()
    assert time.monotonic() - failing.spawned >= 1.0
