"""Files replaced whole: a crash or a failed write leaves the old version or the new one, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path`` (created with ``mode``, so a secret is never
    readable by others even for a moment), then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # the umask may have narrowed it at creation
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    """A JSON record, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_tail(path: Path, limit: int = 1024**2) -> str:
    """The last ``limit`` bytes of a file as text, saying how much came before: a log a guest can
    fill without end (its console) is never read whole into memory."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        text = f.read(limit).decode(errors="replace")
    return text if size <= limit else f"[... {size - limit} earlier bytes not shown ...]\n{text}"
