"""The serial console: QEMU logs it to a file and serves it on a socket.

Waiting for a line connects to the socket (live bytes) and also reads the log
from a known offset (bytes printed before we connected), so no line is missed
and no polling loop is needed: ``recv`` blocks until the guest prints.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from ..errors import Timeout

WINDOW = 64 * 1024  # what is kept of the console while waiting: a flooding guest costs no more
CHUNK = 1024 * 1024


class Console:
    """A VM's serial console: ``console.log`` plus the live ``console.sock``."""

    def __init__(self, log_path: Path, socket_path: Path):
        self.log_path = Path(log_path)
        self.socket_path = Path(socket_path)

    def size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_for(self, pattern: str, since: int, timeout: float, alive=lambda: True) -> str:
        """Block until ``pattern`` (a regex) appears after log offset ``since``.

        ``alive`` is checked when the socket closes or stays silent, so a QEMU
        that died fails fast instead of waiting out the timeout. Memory is bounded
        whatever the guest prints: the log is scanned in chunks and only the last
        ``WINDOW`` characters are kept between reads.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket_path))
            m, seen = self._scan(regex, since)
            while not m:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"no console line matching {pattern!r} within {timeout:.0f}s "
                                  f"(last output: {seen.strip()[-300:]!r})")
                sock.settimeout(min(remaining, 1.0))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    data = None
                if data == b"" or (data is None and not alive()):
                    if not alive():
                        raise Timeout(f"QEMU exited before the console showed {pattern!r} "
                                      f"(last output: {self._scan(regex, since)[1].strip()[-300:]!r})")
                    m, seen = self._scan(regex, since)
                    continue
                if data:
                    seen += data.decode(errors="replace")
                    m = regex.search(seen)
                    seen = seen[-WINDOW:]
            return m.group(0)
        finally:
            sock.close()

    def _scan(self, regex: re.Pattern, since: int) -> tuple[re.Match | None, str]:
        """Search the log from offset ``since`` a chunk at a time: (the first match, or None; the last
        ``WINDOW`` characters read)."""
        if not self.log_path.exists():
            return None, ""
        tail = ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            while chunk := f.read(CHUNK):
                tail += chunk.decode(errors="replace")
                if m := regex.search(tail):
                    return m, tail[-WINDOW:]
                tail = tail[-WINDOW:]
        return None, tail
