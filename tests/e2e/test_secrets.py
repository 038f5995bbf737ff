"""No secret leaks: after a run that creates, uses, misuses and revokes keys against a real server with a
real replica, no issued API key and no replica token appears in a log, an error body, ``/metrics``,
an event or a process's command line, and no API key is stored in the database in the clear."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.harness import Server

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def command_lines() -> list[str]:
    """Every process's command line on this machine (the replicas and the server among them)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def test_no_issued_secret_appears_in_logs_errors_metrics_events_or_command_lines(
        make_server: Callable[..., Server]) -> None:
    s = make_server().start()
    admin = s.admin_key
    texts: list[tuple[str, str]] = []  # (where, what it said)
    with s.client() as c:
        owner = c.post("/v1/keys", json={"owner": "alice", "name": "laptop"}).json()["key"]
        app = c.post("/v1/keys", json={"owner": "alice", "scope": "inference"}).json()["key"]
        gone = c.post("/v1/keys", json={"owner": "alice"}).json()
        c.delete(f"/v1/keys/{gone['id']}")
    ep = s.create_tiny(owner)
    s.wait_state(ep["id"], {"STARTED"}, key=owner)
    keys = {"admin": admin, "owner": owner, "inference": app, "revoked": gone["key"]}

    def said(where: str, r: httpx.Response) -> None:
        texts.append((f"{where}: {r.request.method} {r.request.url.path} {r.status_code}", r.text))

    with httpx.Client(base_url=s.url, timeout=60) as c:
        for name, key in keys.items():  # each key used, the revoked one refused
            h = {"authorization": f"Bearer {key}"}
            said(name, c.post("/v1/chat/completions", headers=h, json={**CHAT, "model": ep["name"]}))
            said(name, c.get(f"/v1/endpoints/{ep['id']}", headers=h))
            said(name, c.post("/v1/endpoints", headers=h, json={"model": "nope", "hardware": "1x_cpu"}))
            said(name, c.get("/v1/endpoints/endpoint-nope", headers=h))
        with c.stream("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {owner}"},
                      json={**CHAT, "model": ep["name"], "stream": True}) as r:
            texts.append(("stream", r.read().decode()))
        said("wrong key", c.get("/v1/endpoints", headers={"authorization": f"Bearer {owner}x"}))
        said("metrics", c.get("/metrics", headers={"authorization": f"Bearer {admin}"}))
        said("events", c.get(f"/v1/endpoints/{ep['id']}/events", headers={"authorization": f"Bearer {owner}"}))
        said("replicas", c.get(f"/v1/endpoints/{ep['id']}/replicas", headers={"authorization": f"Bearer {owner}"}))
    assert any("dedicate_" in t for w, t in texts if w.startswith("metrics")), "the metrics page was read"

    db = s.data_dir / "dedicate.db"
    with sqlite3.connect(db) as conn:
        tokens = [t for (t,) in conn.execute("SELECT token FROM replicas")]
    assert tokens and all(len(t) >= 16 for t in tokens)
    texts += [(f"command line: {line[:80]}", line) for line in command_lines()]
    logs = [p for p in s.data_dir.rglob("*") if p.is_file() and p.suffix in (".log", ".txt", ".out", ".err")]
    assert any(p.name == "server.log" for p in logs) and len(logs) >= 2, logs  # the server's and a replica's
    texts += [(f"log {p.relative_to(s.data_dir)}", p.read_text(errors="replace")) for p in logs]

    for name, secret in [*keys.items(), *((f"replica token {i}", t) for i, t in enumerate(tokens))]:
        for where, text in texts:
            assert secret not in text, f"the {name} secret appears in {where}"
    stored = b"".join(p.read_bytes() for p in s.data_dir.glob("dedicate.db*"))
    for name, secret in keys.items():
        assert secret.encode() not in stored, f"the {name} key is stored in the clear"


def listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) that listen on ``port``, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_replica_ports_listen_on_loopback_only(make_server: Callable[..., Server]) -> None:
    s = make_server().start()
    ep = s.create_tiny()
    s.wait_state(ep["id"], {"STARTED"})
    with sqlite3.connect(s.data_dir / "dedicate.db") as conn:
        bound = [(h, p) for h, p in conn.execute("SELECT host, port FROM replicas WHERE stopped_at IS NULL")]
    assert bound and all(host == "127.0.0.1" for host, _ in bound), bound
    for _, port in bound:
        assert listening(port) == {"0100007F"}, f"replica port {port} listens on {listening(port)}, not loopback"
