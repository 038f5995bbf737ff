"""What every `dedicate` command shares: where the server is, its key, the HTTP client, output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click
import httpx

from dedicate.settings import ConfigError, Location, locate

json_opt = click.option("--json", "as_json", is_flag=True, help="print JSON")


def location() -> Location:
    try:
        return locate()
    except ConfigError as exc:
        fail(f"config: {exc}")


def base_url() -> str:
    if url := os.environ.get("DEDICATE_URL"):
        return url.rstrip("/")
    return location().client_url()


def api_key() -> str:
    if key := os.environ.get("DEDICATE_API_KEY"):
        return key
    key_file = location().data_dir / "admin.key"
    if key_file.exists():
        return key_file.read_text().strip()
    fail("no API key: set DEDICATE_API_KEY, or run on the server's machine where "
          f"{key_file} holds the admin key")


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class Client:
    def __init__(self) -> None:
        self.http = httpx.Client(base_url=base_url(), timeout=60.0,
                                 headers={"authorization": f"Bearer {api_key()}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach dedicate at {self.http.base_url}: {exc}; is `dedicate up` running?")
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text or resp.reason_phrase
            fail(f"{message} (HTTP {resp.status_code})")
        return None if resp.status_code == 204 or not resp.content else resp.json()


def out(obj: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2))
    elif text is not None:
        click.echo(text)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
