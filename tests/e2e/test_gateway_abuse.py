"""The gateway's OpenAI routes and the API under bad input, on a real server on loopback: broken, huge,
wrongly typed and random bodies, huge headers and slow senders each get a clear 4xx, never a 5xx,
and no connection is held past the documented timeouts (``body_timeout_s``, 1 s here)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import FAST_CONFIG, Server

CONFIG = FAST_CONFIG + """
[gateway]
body_timeout_s = 1.0
max_body_bytes = 65536
hold_s = 0.5
"""
ROUTES = ("/v1/chat/completions", "/v1/completions")
READ_S = 20.0  # a socket read that waits longer than this would mean a hung connection


@pytest.fixture(scope="module")
def abused(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("abuse") / "server", config=CONFIG, shared_models=tiny_model).start()
    try:
        yield s
    finally:
        s.cleanup()


def raw(s: Server, request: bytes, then: bytes | None = None, *, closed: bool = False) -> bytes:
    """Send ``request`` on a fresh socket (and nothing more unless ``then``); the whole answer. With
    ``closed``, the server must also close the connection (it cannot read on past a body it refused)."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=READ_S) as sock:
        sock.sendall(request)
        if then is not None:
            sock.sendall(then)
        out = b""
        while not complete(out):
            out += receive(sock, out)
            if out.endswith(b"<closed>"):
                return out.removesuffix(b"<closed>")
        if closed:
            assert receive(sock, out) == b"<closed>", "the connection was kept open after a refused body"
        return out


def receive(sock: socket.socket, so_far: bytes) -> bytes:
    try:
        chunk = sock.recv(65536)
    except TimeoutError:
        raise AssertionError(f"nothing within {READ_S} s: the connection hangs; got {so_far[:200]!r}") from None
    return chunk or b"<closed>"


def complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = [line.lower() for line in head.split(b"\r\n")]
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
    if length is not None:
        return len(body) >= length
    return b"transfer-encoding: chunked" in lines and body.endswith(b"0\r\n\r\n")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def envelope(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():  # one chunk or more: their sizes, then their bytes
        data, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            data, rest = data + rest[:n], rest[n + 2:]
        body = data
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}, error
    return error  # type: ignore[no-any-return]


def head(s: Server, path: str, length: int, key: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("path", [*ROUTES, "/v1/endpoints"])
def test_a_sender_that_stalls_mid_body_gets_408_and_the_connection_back(abused: Server, path: str) -> None:
    answer = raw(abused, head(abused, path, 1000, abused.admin_key) + b'{"model": "x", "mess', closed=True)
    assert status_of(answer) == 408, answer[:300]
    assert envelope(answer)["code"] == "request_timeout" and "within 1 s" in envelope(answer)["message"]


def test_a_chunked_sender_that_stalls_gets_408(abused: Server) -> None:
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {abused.admin_key}"
               "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n").encode()
    assert status_of(raw(abused, request)) == 408


@pytest.mark.parametrize("path", ROUTES)
def test_an_oversized_body_is_refused_with_413_declared_or_not(abused: Server, path: str) -> None:
    big = b'{"model": "x", "prompt": "' + b"a" * 70000 + b'"}'
    declared = raw(abused, head(abused, path, len(big), abused.admin_key), big)
    assert status_of(declared) == 413 and envelope(declared)["code"] == "request_too_large"
    with httpx.Client(base_url=abused.url, timeout=READ_S) as c:
        chunked = c.post(path, content=iter([big[:30000], big[30000:]]),
                         headers={"authorization": f"Bearer {abused.admin_key}", "content-type": "application/json"})
    assert chunked.status_code == 413


def test_huge_headers_are_refused_without_a_server_error(abused: Server) -> None:
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {'p' * 200_000}\r\n"
               "Content-Length: 2\r\n\r\n{}").encode()
    try:
        answer = raw(abused, request)
    except (ConnectionResetError, BrokenPipeError):
        return  # closed on us: refused, nothing hangs
    assert not answer or 400 <= status_of(answer) < 500, answer[:200]


@pytest.mark.parametrize(("content", "ctype", "code"), [
    (b"{not json", "application/json", 400), (b"[1, 2]", "application/json", 400), (b"", "application/json", 400),
    (b'{"model": 5}', "application/json", 400), (b"model=x&prompt=y", "application/x-www-form-urlencoded", 400),
    (b"\xff\xfe\x00garbage", "text/plain", 400), (b'{"model": "nobody/none", "prompt": "x"}', "text/plain", 404),
])
def test_broken_or_mistyped_bodies_get_a_clear_4xx(abused: Server, content: bytes, ctype: str, code: int) -> None:
    with httpx.Client(base_url=abused.url, timeout=READ_S) as c:
        for path in ROUTES:
            r = c.post(path, content=content, headers={"authorization": f"Bearer {abused.admin_key}",
                                                        "content-type": ctype})
            assert r.status_code == code, (path, content, r.text)
            assert r.json()["error"]["message"], r.text


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                          max_size=4), max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.text(max_size=30), JSON), "messages": JSON, "prompt": JSON, "stream": JSON,
    "max_tokens": JSON, "temperature": JSON, "n": JSON, "stop": JSON})


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(FIELDS, JSON), path=st.sampled_from(ROUTES))
def test_any_json_body_gets_an_answer_below_500(abused: Server, body: Any, path: str) -> None:
    with httpx.Client(base_url=abused.url, timeout=READ_S) as c:
        r = c.post(path, json=body, headers={"authorization": f"Bearer {abused.admin_key}"})
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


def test_the_server_is_well_after_all_of_it(abused: Server) -> None:
    assert httpx.get(f"{abused.url}/healthz", timeout=READ_S).status_code == 200
    assert abused.proc is not None and abused.proc.poll() is None
