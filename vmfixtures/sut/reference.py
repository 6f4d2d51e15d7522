"""The reference product: the ``vmfixtures`` CLI itself, judged like any other product.

Its argv, wording and exit codes are known here and nowhere else in the
specification (steps see only ``Outcome``s).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

from .. import __version__
from .base import (BAD_CONFIG, CORRUPT, DONE, EXISTS, FAILED, MISMATCH, MISSING_SOURCE, MISSING_TOOL, NOT_RUNNING,
                   NOT_WRITABLE, REFUSED, UNKNOWN_VM, UNSUPPORTED, Outcome, Product)

# vmfixtures --help: exit codes, and what each means to the specification
EXIT_REFUSALS = {2: BAD_CONFIG, 3: UNKNOWN_VM, 4: MISMATCH, 5: MISSING_TOOL, 6: NOT_WRITABLE, 8: NOT_RUNNING,
                 10: UNSUPPORTED}
# finer kinds, told apart by the message (the wording is this product's own)
MESSAGE_REFUSALS = (("does not exist or is not a folder", MISSING_SOURCE), ("is not writable", NOT_WRITABLE),
                    ("corrupt snapshot", CORRUPT), ("already exists", EXISTS))
SNAPSHOT_FORMAT = "%Y%m%dT%H%M%S.%f"  # backups/folders.py names snapshots by their start time


class Vmfixtures(Product):
    """Drives ``python -m vmfixtures`` in the scenario's project folder."""

    name = "vmfixtures"
    supports = frozenset({"backups", "disk-backups", "vm-snapshots", "lifecycle", "daemon", "mounts", "agents",
                          "forwarding", "connectivity", "observer", "cli"})

    snapshot_format = SNAPSHOT_FORMAT

    def __init__(self, project):
        self.project = project

    def version(self) -> str:
        return __version__

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vmfixtures", "--quiet", *args]

    def run(self, action: str, *args: str, input: str | None = None, at: datetime | None = None) -> Outcome:
        """Run one command (its clock at ``at``, when given) and classify what came back."""
        r = self.project.run(self.at_time(self.argv(*args), at), input=input)
        return classify(action, ["vmfixtures", *args], r.exit_code, r.stdout, r.stderr)

    # -- config ------------------------------------------------------------
    def render_config(self, model: dict) -> str:
        data: dict = {"vms": model.get("vms", {})}
        for section in ("mounts", "agents", "forwards"):
            if model.get(section):
                data[section] = model[section]
        return yaml.safe_dump(data, sort_keys=False)

    def installation_key(self) -> Path:
        """Where this product keeps its per-installation SSH private key (its README: the data folder)."""
        env = self.project._env()
        data = env.get("VMFIXTURES_DATA_DIR") or str(Path(env.get("XDG_DATA_HOME") or Path.home() / ".local/share")
                                                      / "vmfixtures")
        return Path(data) / "ssh" / "id_ed25519"

    # -- folder backups ----------------------------------------------------
    def backup_once(self, source: Path, dest: Path, at: datetime | None = None) -> Outcome:
        return self.run("backup-once", "backup-once", str(source), str(dest), at=at)

    def backup_repeated(self, source: Path, dest: Path, interval: float) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated", str(source), str(dest), "--interval", f"{interval:g}"))

    def backup_repeated_mount(self, source: str) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated-mount", source, "-c", str(self.project.config_path)))

    def backup_repeated_all(self) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated-all", "-c", str(self.project.config_path)))

    def clean_tail(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self.run("backup-clean tail", "backup-clean", str(dest), "tail", str(keep))

    def clean_thin(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self.run("backup-clean thin", "backup-clean", str(dest), "thin", str(keep))


def classify(action: str, argv: list[str], code: int, stdout: str, stderr: str) -> Outcome:
    """Exit code and message of a vmfixtures command -> Outcome."""
    if code == 0:
        note = "nothing-changed" if "nothing changed" in stdout else None
        return Outcome(action, DONE, None, note, code, stdout, stderr, argv)
    refusal = EXIT_REFUSALS.get(code)
    for words, kind in MESSAGE_REFUSALS:
        if words in stderr:
            refusal = kind
            break
    return Outcome(action, REFUSED if refusal else FAILED, refusal, None, code, stdout, stderr, argv)
