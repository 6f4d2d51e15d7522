"""What spec steps use to act like an operator: a project folder and the CLI.

Steps stay thin by calling these: ``Project`` writes the scenario's YAML
config; ``Project.operator(...)`` runs the real `vmfixtures` command line
against the run's storage, so exit codes and messages are tested as users
see them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .scope import RunScope


@dataclass
class CommandResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"`vmfixtures {' '.join(self.argv)}` exited {self.exit_code}\n"
                f"  stdout: {self.stdout.strip()!r}\n  stderr: {self.stderr.strip()!r}")


class Project:
    """A scenario's project folder with its ``vmfixtures.yaml``."""

    def __init__(self, folder: Path, scope: RunScope):
        self.folder = Path(folder)
        self.scope = scope
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vms: dict[str, dict] = {}

    @property
    def config_path(self) -> Path:
        return self.folder / "vmfixtures.yaml"

    def declare_vm(self, name: str, **fields) -> None:
        """Add or change a VM in the config and write the file."""
        self.vms[name] = {k: v for k, v in fields.items() if v not in (None, "")}
        self.write_config({"vms": self.vms})

    def write_config(self, data: dict | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        self.config_path.write_text(text)

    def operator(self, *argv: str, timeout: float = 600) -> CommandResult:
        """Run `vmfixtures ARGV...` in the project folder against the run's storage."""
        env = dict(os.environ, VMFIXTURES_STATE_DIR=str(self.scope.dir), VMFIXTURES_OWNER_PID=str(os.getpid()))
        proc = subprocess.run([sys.executable, "-m", "vmfixtures", "--quiet", *argv], cwd=self.folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        return CommandResult(list(argv), proc.returncode, proc.stdout, proc.stderr)
