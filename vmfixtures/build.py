"""Which build of vmfixtures this is: a hash of its own source files.

The fixture daemon outlives the runs that start it; a daemon started from other sources (an
upgrade, a checkout of another branch) would serve new clients with old behaviour. Clients
compare builds and replace an idle daemon of another build."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.lru_cache(maxsize=1)
def build_id() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yaml") or path.parent.name == "guest":
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]
