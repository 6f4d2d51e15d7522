"""A running VM as tests see it: run commands, move files, watch the console.

Modelled on the NixOS test driver's ``Machine``: ``succeed`` returns stdout
or raises with the exit code and stderr, ``fail`` is its mirror. Commands go
through qemu-guest-agent (no SSH handshake per command); ``ssh`` is there for
shells, forwarding and mounts.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING
from pathlib import Path

from .errors import GuestError
from .guest.agent import GuestAgent
from .guest.console import Console
from .guest.result import ExecResult

if TYPE_CHECKING:
    from .guest.ssh import SSH


class Machine:
    """One running VM's guest channels."""

    def __init__(self, name: str, run_dir: Path, console_log: Path, ssh_port: int | None,
                 host_key: str, key_path: Path, accel: str, agent: GuestAgent | None = None):
        self.name = name
        self.accel = accel
        self.ssh_port = ssh_port
        self.console = Console(console_log, run_dir / "console.sock")
        self.agent = agent or GuestAgent(run_dir / "qga.sock")
        self._ssh_args = (ssh_port, key_path, host_key)
        self._ssh: SSH | None = None

    @property
    def ssh(self) -> SSH:
        from .guest.ssh import SSH  # asyncssh: ~0.1 s to import, which most commands never need

        if self._ssh is None:
            if not self.ssh_port:
                raise GuestError(f"VM '{self.name}' has no SSH port forward")
            self._ssh = SSH(*self._ssh_args)
        return self._ssh

    def execute(self, command: str | list[str], timeout: float = 60.0, input: bytes | None = None) -> ExecResult:
        """Run a shell command (str) or an argv (list) in the guest."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        result = self.agent.exec(argv, input=input, timeout=timeout)
        result.command = command if isinstance(command, str) else shlex.join(command)
        return result

    def succeed(self, command: str | list[str], timeout: float = 60.0) -> str:
        """Run ``command``; return its stdout, or raise GuestError if it fails."""
        result = self.execute(command, timeout)
        if not result.ok:
            raise GuestError(f"on {self.name}: {result.describe()}")
        return result.stdout

    def fail(self, command: str | list[str], timeout: float = 60.0) -> str:
        """Run ``command``; return its stderr, or raise GuestError if it succeeds."""
        result = self.execute(command, timeout)
        if result.ok:
            raise GuestError(f"on {self.name}: expected failure, but {result.describe()}")
        return result.stderr

    def wait_until_succeeds(self, command: str, timeout: float = 30.0) -> str:
        """Re-run ``command`` in the guest until it succeeds (the loop runs inside the guest)."""
        return self.succeed(self._retry_loop(command, "", timeout), timeout=timeout + 10)

    def wait_until_fails(self, command: str, timeout: float = 30.0) -> str:
        """Re-run ``command`` in the guest until it fails."""
        return self.succeed(self._retry_loop(command, "!", timeout), timeout=timeout + 10)

    @staticmethod
    def _retry_loop(command: str, negate: str, timeout: float) -> str:
        tries = max(1, int(timeout / 0.05))
        return (f"i=0; until {negate} {command}; do i=$((i+1)); [ $i -ge {tries} ] && exit 1; "
                f"busybox usleep 50000; done")

    def read_file(self, path: str) -> bytes:
        return self.agent.read_file(path)

    def write_file(self, path: str, data: bytes | str) -> None:
        self.agent.write_file(path, data.encode() if isinstance(data, str) else data)

    def wait_for_console(self, pattern: str, timeout: float = 60.0, since: int = 0) -> str:
        return self.console.wait_for(pattern, since, timeout)

    def close(self) -> None:
        self.agent.close()
        if self._ssh:
            self._ssh.close()
