"""SSH to a guest through its 127.0.0.1 port forward (asyncssh).

asyncssh is asynchronous; steps, the CLI and benchmarks are not. One event
loop runs in a daemon thread and every call is submitted to it, so a single
connection can serve many commands (opening one costs ~2 s under TCG).
The guest's host key is pinned from the image, never trusted on first use.
"""

from __future__ import annotations

import asyncio
import shlex
import threading
from pathlib import Path

import asyncssh

from ..errors import GuestError, Timeout
from .result import ExecResult

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _run(coro, timeout: float):
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="vmfixtures-ssh", daemon=True).start()
    future = asyncio.run_coroutine_threadsafe(coro, _loop)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise Timeout(f"SSH operation did not finish within {timeout:.0f}s") from None


class SSH:
    """An SSH endpoint of one guest; ``run`` reuses one connection."""

    def __init__(self, port: int, key_path: Path, host_key: str, user: str = "root", host: str = "127.0.0.1"):
        self.port, self.key_path, self.user, self.host = port, Path(key_path), user, host
        self.host_key = asyncssh.import_public_key(host_key)
        self._conn: asyncssh.SSHClientConnection | None = None

    def _options(self) -> dict:
        return dict(host=self.host, port=self.port, username=self.user,
                    client_keys=[str(self.key_path)], known_hosts=([self.host_key], [], []))

    async def _connect(self) -> asyncssh.SSHClientConnection:
        try:
            return await asyncssh.connect(**self._options())
        except (OSError, asyncssh.Error) as exc:
            raise GuestError(f"SSH to {self.user}@{self.host}:{self.port}: {exc}") from None

    async def _exec(self, conn, command: str, input: str | None) -> ExecResult:
        r = await conn.run(command, input=input, check=False)
        code = r.exit_status if r.exit_status is not None else 255  # 255: killed by a signal, as ssh(1)
        return ExecResult(command, code, str(r.stdout or ""), str(r.stderr or ""))

    def connect(self, timeout: float = 30.0) -> None:
        if self._conn is None:
            self._conn = _run(self._connect(), timeout)

    def run(self, command: str | list[str], input: str | None = None, timeout: float = 60.0) -> ExecResult:
        """Run ``command`` over the shared connection (opened on first use)."""
        if isinstance(command, list):
            command = shlex.join(command)
        self.connect(timeout)
        try:
            return _run(self._exec(self._conn, command, input), timeout)
        except (OSError, asyncssh.Error) as exc:
            self.close()
            raise GuestError(f"SSH command {command!r}: {exc}") from None

    def sftp(self, work, timeout: float = 600.0):
        """Run ``await work(sftp_client)`` over the shared connection; its result is returned.
        Errors of the SFTP protocol reach the caller as asyncssh's ``SFTPError`` subclasses."""
        self.connect(min(timeout, 60.0))

        async def session():
            async with self._conn.start_sftp_client() as client:
                return await work(client)
        try:
            return _run(session(), timeout)
        except asyncssh.SFTPError:
            raise
        except (OSError, asyncssh.Error) as exc:
            self.close()
            raise GuestError(f"SFTP to {self.user}@{self.host}:{self.port}: {exc}") from None

    def run_once(self, command: str, timeout: float = 60.0) -> ExecResult:
        """Run ``command`` on a fresh connection, as `ssh host cmd` would."""
        async def once():
            conn = await self._connect()
            async with conn:
                return await self._exec(conn, command, None)
        return _run(once(), timeout)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                async def _close():
                    conn.close()
                    await conn.wait_closed()
                _run(_close(), 10)
            except Exception:
                pass  # the guest may be gone already; nothing to release on our side
