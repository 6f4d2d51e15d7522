"""The outcome of one guest command, whichever channel ran it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExecResult:
    """Exit code and output of a guest command."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        return (f"`{self.command}` exited {self.exit_code}\n"
                f"  stdout: {self.stdout.strip()[-500:]!r}\n  stderr: {self.stderr.strip()[-500:]!r}")
