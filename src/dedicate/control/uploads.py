"""Uploads of model weights: files streamed into the owner's directory under the model root.

``PUT /v2/projects/{p}/uploads/{upload}/files/{path}`` writes one file of an upload into
``<model root>/owners/<owner>/uploads/<upload>/<path>``: streamed to a temporary file beside it,
counted against ``[server] max_upload_bytes`` for the whole upload (a declared length over it is
refused before a byte is read), and renamed into place only when complete, so a cut or refused
upload leaves nothing half-written. Registering the directory then makes the model
(``POST /v2/projects/{p}/models`` with ``path`` = the upload's directory). Resuming is not offered:
a file is sent again whole.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from dedicate.domain.errors import InvalidRequest, PayloadTooLarge

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_DEPTH = 4


@dataclass(frozen=True)
class Uploaded:
    directory: str  # relative to the model root: what registration takes as `path`
    file: str
    size: int
    total: int  # every file of the upload together


def upload_dir(models_dir: Path, owner: str, upload: str) -> Path:
    if not _PART.fullmatch(upload):
        raise InvalidRequest(f"upload {upload!r} must be 1-128 letters, digits, '.', '-' or '_'", param="upload")
    return models_dir / "owners" / owner / "uploads" / upload


def file_path(directory: Path, path: str) -> Path:
    """The file ``path`` of an upload: relative, at most four levels, plain names only."""
    parts = path.split("/")
    if not path or len(parts) > MAX_DEPTH or not all(_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise InvalidRequest(f"file path {path!r} must be up to {MAX_DEPTH} '/'-separated names of letters, digits, "
                             "'.', '-' or '_' (no '..')", param="path")
    return directory.joinpath(*parts)


def _size_of(directory: Path, leaving_out: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p != leaving_out
               and not p.name.startswith(".part-"))


async def receive(models_dir: Path, owner: str, upload: str, path: str, declared: int | None,
                  chunks: AsyncIterator[bytes], cap: int) -> Uploaded:
    directory = upload_dir(models_dir, owner, upload)
    target = file_path(directory, path)
    await anyio.to_thread.run_sync(lambda: target.parent.mkdir(parents=True, exist_ok=True))
    already = await anyio.to_thread.run_sync(_size_of, directory, target)
    room = cap - already
    too_large = PayloadTooLarge(f"upload {upload!r} may hold at most {cap} bytes in all; {already} are there "
                                f"already, so this file may have at most {max(room, 0)}")
    if declared is not None and declared > room:
        raise too_large
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    tmp = Path(tmp_name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > room:
                    raise too_large
                await anyio.to_thread.run_sync(f.write, chunk)
        await anyio.to_thread.run_sync(os.replace, tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Uploaded(str(directory.relative_to(models_dir)), path, size, already + size)
