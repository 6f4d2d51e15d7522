"""agsekit (PyPI), the first outside product the specification judges.

agsekit runs coding agents in Multipass VMs and keeps rsync snapshots of the
mounted folders on the host. Its host-side commands run here for real
(backup-once, backup-repeated and its -mount/-all variants, backup-clean);
whatever needs Multipass is a capability it lacks on this host. Facts below
are agsekit 1.7.4's (``agsekit_cli/commands/*.py``, ``backup.py``,
``locales/en.json``), checked by running it.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import yaml

from ..errors import MissingDependency
from .base import DONE, FAILED, MISSING_SOURCE, NOT_WRITABLE, REFUSED, Outcome, Product

PINNED = "1.7.4"  # the version the README's set-up installs (its own virtual environment)
SNAPSHOT_FORMAT = "%Y%m%d-%H%M%S"  # backup.py: datetime.now().strftime(...), one-second resolution
REFUSALS = (("Source directory does not exist", MISSING_SOURCE),)


def default_command() -> Path:
    """``.venv-agsekit/bin/agsekit`` beside this repository (``./bootstrap test`` installs it)."""
    return Path(__file__).resolve().parents[2] / ".venv-agsekit" / "bin" / "agsekit"


class Agsekit(Product):
    """Drives the ``agsekit`` command in the scenario's project folder."""

    name = "agsekit"
    supports = frozenset({"backups"})  # VMs, mounts, agents and forwarding need Multipass: not on this host
    config_name = "agsekit.yaml"
    snapshot_format = SNAPSHOT_FORMAT
    min_interval = 60.0  # backup-repeated counts its --interval in whole minutes

    def __init__(self, project, command: str | None = None):
        self.project = project
        self.command = str(command or default_command())
        if not (shutil.which(self.command) or Path(self.command).is_file()):
            raise MissingDependency(f"agsekit not found at {self.command}: `./bootstrap test` installs agsekit "
                                    f"{PINNED} into .venv-agsekit, or give -D agsekit=PATH")

    def lacks(self, capability):
        reason = super().lacks(capability)
        return reason and f"{reason}; agsekit drives VMs through Multipass, which cannot run on this host"

    def version(self) -> str:
        r = subprocess.run([self.command, "version"], capture_output=True, text=True, env=self._env())
        first = (r.stdout.strip().splitlines() or ["unknown"])[0]  # "Installed version: 1.7.4"
        return first.rsplit(" ", 1)[-1] if r.returncode == 0 else "unknown"

    def _env(self) -> dict:
        home = self.project.folder / ".agsekit-home"  # its state.yaml and default config live under HOME
        home.mkdir(exist_ok=True)
        return {"HOME": str(home), "AGSEKIT_LANG": "en", "CONFIG_PATH": str(self.project.config_path),
                "PYTHONUNBUFFERED": "1", "AGSEKIT_BACKUP_LOCK_SLEEP_SECONDS": "1"}

    def run(self, action: str, *args: str, at: datetime | None = None) -> Outcome:
        r = self.project.run(self.at_time([self.command, *args], at), env=self._env())
        return classify(action, ["agsekit", *args], r.exit_code, r.stdout, r.stderr)

    # -- config ------------------------------------------------------------
    def render_config(self, model: dict) -> str:
        """agsekit's config: vms need cpu, ram and disk; mounts count their interval in minutes."""
        vms = {name: {"cpu": int(v.get("cpus", 1)), "ram": str(v.get("memory", "1G")), "disk": str(v.get("disk", "5G"))}
               for name, v in (model.get("vms") or {"sandbox": {}}).items()}
        mounts = []
        for m in model.get("mounts") or []:
            entry = {"source": m["source"], "target": m.get("target", f"/home/ubuntu/{Path(m['source']).name}"),
                     "vm": m.get("vm", next(iter(vms)))}
            if "backup" in m:
                entry["backup"] = m["backup"]
            if "interval" in m:
                entry["interval"] = max(1, round(float(m["interval"]) / 60))
            mounts.append(entry)
        return yaml.safe_dump({"vms": vms, **({"mounts": mounts} if mounts else {})}, sort_keys=False)

    # -- folder backups ----------------------------------------------------
    def backup_once(self, source: Path, dest: Path, at: datetime | None = None) -> Outcome:
        return self.run("backup-once", "backup-once", "--source-dir", str(source), "--dest-dir", str(dest), at=at)

    def start_backup_once(self, source: Path, dest: Path):
        return self.project.spawn_with([self.command, "backup-once", "--source-dir", str(source),
                                        "--dest-dir", str(dest)], self._env())

    def backup_repeated(self, source: Path, dest: Path, interval: float):
        minutes = max(1, round(interval / 60))
        return self.project.spawn_with([self.command, "backup-repeated", "--source-dir", str(source),
                                        "--dest-dir", str(dest), "--interval", str(minutes)], self._env())

    def backup_repeated_mount(self, source: str):
        return self.project.spawn_with([self.command, "backup-repeated-mount", "--mount", source,
                                        "--config", str(self.project.config_path)], self._env())

    def backup_repeated_all(self):
        return self.project.spawn_with([self.command, "backup-repeated-all", "--config",
                                        str(self.project.config_path)], self._env())

    def _clean(self, source: Path, dest: Path, keep: int, method: str) -> Outcome:
        """backup-clean finds the folder through a mount of the config: give it one whose backup is
        ``dest``, hourly like the history the spec makes (thin weighs gaps by the interval)."""
        config = self.project.folder / "agsekit-clean.yaml"
        config.write_text(yaml.safe_dump({"vms": {"sandbox": {"cpu": 1, "ram": "1G", "disk": "5G"}},
                                          "mounts": [{"source": str(source), "backup": str(dest), "interval": 60,
                                                      "vm": "sandbox"}]}))
        return self.run(f"backup-clean {method}", "backup-clean", str(source), str(keep), method,
                        "--config", str(config))

    def clean_tail(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self._clean(source, dest, keep, "tail")

    def clean_thin(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self._clean(source, dest, keep, "thin")


def classify(action: str, argv: list[str], code: int, stdout: str, stderr: str) -> Outcome:
    """agsekit's exit code and words -> Outcome. A Python traceback is a failure, never a refusal."""
    if code == 0:
        note = "nothing-changed" if "No changes detected" in stdout else None
        return Outcome(action, DONE, None, note, code, stdout, stderr, argv)
    if "Traceback (most recent call last)" in stderr:
        return Outcome(action, FAILED, None, None, code, stdout, stderr, argv)
    for words, kind in REFUSALS:
        if words in stderr:
            return Outcome(action, REFUSED, kind, None, code, stdout, stderr, argv)
    if "Permission denied" in stderr or "Read-only file system" in stderr:
        return Outcome(action, REFUSED, NOT_WRITABLE, None, code, stdout, stderr, argv)
    return Outcome(action, FAILED, None, None, code, stdout, stderr, argv)

