"""Services run in the API's worker threads; what they do to loop-owned objects is handed to the loop.

The real composition (``server.build_parts``): while the gateway's key cache serves lookups on the
event loop (in debug mode, which raises on a loop call from another thread) and the reconciler waits
on its wake event, many threads revoke keys and wake the reconciler through the services, as API
handlers do. Every call lands on the loop's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest

from dedicate.control.auth import Principal
from dedicate.control.inputs import NewKey
from dedicate.gateway.keys import KeyCache
from dedicate.server import build_parts
from dedicate.settings import load_settings

ADMIN = Principal("admin", True, "key_admin")


def test_keys_revoked_and_wakes_from_many_threads_reach_the_loop_while_the_gateway_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forgot_on: list[int] = []
    forget = KeyCache.forget

    def recording_forget(self: KeyCache, key_id: str | None = None) -> None:
        forgot_on.append(threading.get_ident())
        forget(self, key_id)

    monkeypatch.setattr(KeyCache, "forget", recording_forget)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cpu]\nslots = 0\n[gpu]\ndiscover = false\n")
    parts = build_parts(load_settings({"DEDICATE_DATA_DIR": str(tmp_path / "d"), "DEDICATE_CONFIG": str(cfg)}))
    keys = [parts.services.create_key(ADMIN, NewKey(owner=f"owner{i % 4}")) for i in range(64)]
    errors: list[BaseException] = []

    async def scenario() -> tuple[int, int, list[str]]:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)  # any loop call from another thread raises instead of racing
        parts.handoff.bind(loop)
        cache, wake = parts.gateway.keys, parts.reconciler.wake
        stop = asyncio.Event()
        wakes = 0

        async def serve() -> None:  # the gateway checking keys, filling and refreshing its cache
            while not stop.is_set():
                for _, secret in keys:
                    with contextlib.suppress(Exception):  # a revoked key's 401, once revoked
                        await cache.principal(f"Bearer {secret}")
                await asyncio.sleep(0)

        async def reconcile() -> None:  # the reconciler between passes: always waiting on its event
            nonlocal wakes
            while not stop.is_set():
                await wake.wait()
                wake.clear()
                wakes += 1

        def api_thread(chunk: list[str]) -> None:  # what a worker thread of the API does
            try:
                for key_id in chunk:
                    parts.services.revoke_key(ADMIN, key_id)
                    parts.services.wake()
            except BaseException as exc:
                errors.append(exc)

        tasks = [asyncio.create_task(serve()), asyncio.create_task(reconcile())]
        await asyncio.sleep(0.2)  # the cache is full and the reconciler waits
        ids = [k.id for k, _ in keys]
        threads = [threading.Thread(target=api_thread, args=(ids[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join(30) for t in threads])
        await asyncio.sleep(0.2)  # what was handed over has run
        stop.set()
        wake.set()
        await asyncio.gather(*tasks)
        cached = [p.key_id for _, (__, p) in cache._cache.items() if isinstance(p, Principal)]
        return threading.get_ident(), wakes, cached

    result: list[tuple[int, int, list[str]]] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), f"the loop hung: calls from worker threads did not reach it ({errors})"
    ((loop_thread, wakes, still_cached),) = result
    assert errors == [], errors
    assert wakes >= 1, "a wake from a worker thread woke the waiting loop"
    assert len(forgot_on) == len(keys) and set(forgot_on) == {loop_thread}, \
        "every revoked key was dropped from the gateway's cache on the loop's thread"
    assert still_cached == [], "and none of them is cached any more"
