"""Folder snapshots with rsync: every snapshot is a full tree, unchanged files are hard links.

``backup_once(SOURCE, DEST)``:

1. take ``DEST/.lock`` (two writers never interleave; the second waits);
2. compare SOURCE with the newest snapshot (``rsync --dry-run --itemize-changes``):
   nothing changed means no new snapshot;
3. ``rsync -a --delete --link-dest=NEWEST SOURCE/ DEST/<timestamp>-partial/``;
4. rename ``<timestamp>-partial`` to ``<timestamp>`` only when rsync finished.

rsync decides "unchanged" by size and modification time; by default it
compares whole seconds, so an edit that keeps the size within the same
second would be missed. We pass ``--modify-window=-1`` (nanoseconds), which
leaves only edits within one kernel timestamp tick (a few ms) of each other.

A crash or an interruption leaves at most a ``-partial`` folder, which is
never taken for a snapshot and is removed by the next run. rsync's exit codes
23 (some files could not be transferred) and 24 (files vanished meanwhile)
are warnings naming the files; every other failure removes the partial
folder and leaves every existing snapshot as it was.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import ConfigError, MissingDependency, PermissionDenied, VmfError
from ..procs import die_with_parent

SNAPSHOT_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}$")
PARTIAL_SUFFIX = "-partial"
WARNING_CODES = {23: "some files could not be transferred", 24: "some files vanished during the backup"}


@dataclass
class BackupResult:
    """What one backup did: the new snapshot (None when nothing changed) and any warnings."""

    snapshot: Path | None
    previous: Path | None
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.snapshot is not None


def snapshots(dest: Path) -> list[Path]:
    """Complete snapshots in ``dest``, oldest first (partial folders are not snapshots)."""
    if not Path(dest).is_dir():
        return []
    return sorted(p for p in Path(dest).iterdir() if p.is_dir() and SNAPSHOT_RE.match(p.name))


def ensure_writable(dest: Path, probe_now: bool = True) -> None:
    """Create ``dest`` if needed and prove we can write there (PermissionDenied otherwise).

    The proof writes (and removes) a file, which changes the folder's mtime: a caller that may
    still refuse for another reason passes ``probe_now=False`` and probes right before writing."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionDenied(f"cannot create the backup destination {dest}: {exc.strerror}") from None
    if not probe_now:
        return
    probe = dest / f".write-test-{time.time_ns()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PermissionDenied(f"backup destination {dest} is not writable: {exc.strerror}") from None


def _check(source: Path, dest: Path) -> None:
    if shutil.which("rsync") is None:
        raise MissingDependency("'rsync' not found: install the Debian package 'rsync'")
    if not source.is_dir():
        raise ConfigError(f"backup source {source} does not exist or is not a folder")
    ensure_writable(dest, probe_now=False)  # probed once a snapshot is known to be needed
    if dest.resolve().is_relative_to(source.resolve()):
        raise ConfigError(f"backup destination {dest} lies inside its source {source}")


def _rsync(args: list[str]) -> subprocess.CompletedProcess:
    # rsync dies with us: a backup killed halfway must not leave an rsync writing on, into the
    # partial snapshot that the next backup is about to remove.
    return subprocess.run(["rsync", "--modify-window=-1", *args], capture_output=True, text=True,
                          preexec_fn=die_with_parent)


def _failed_files(stderr: str) -> list[str]:
    files = []
    for line in stderr.splitlines():
        m = re.search(r'"([^"]+)"', line) or re.search(r"file has vanished: (.+)$", line)
        if m and "rsync error" not in line:
            files.append(m.group(1))
    return files


def backup_once(source: Path, dest: Path, now: datetime | None = None) -> BackupResult:
    """Snapshot ``source`` into ``dest`` unless nothing changed since the newest snapshot."""
    source, dest = Path(source), Path(dest)
    _check(source, dest)
    with open(dest / ".lock", "a") as lock:  # "a": no truncation, so a refused backup changes nothing, not even mtimes
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in dest.glob(f"*{PARTIAL_SUFFIX}"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
        corrupt = [p for p in dest.iterdir() if SNAPSHOT_RE.match(p.name)
                   and (p.is_symlink() or not p.is_dir() or not os.access(p, os.R_OK | os.X_OK))]
        if corrupt:
            raise VmfError(f"corrupt snapshot {corrupt[-1]} in {dest}: not a readable folder; repair or move "
                           "it away (nothing was changed)")
        existing = snapshots(dest)
        previous = existing[-1] if existing else None
        if previous is not None:
            diff = _rsync(["-a", "--delete", "--dry-run", "--itemize-changes", f"{source}/", f"{previous}/"])
            if diff.returncode not in (0, *WARNING_CODES):
                raise VmfError(f"rsync could not compare {source} with {previous} "
                               f"(exit {diff.returncode}): {diff.stderr.strip()[-300:]}")
            if not diff.stdout.strip():
                return BackupResult(None, previous)
        stamp = (now or datetime.now()).strftime("%Y%m%dT%H%M%S.%f")
        final = dest / stamp
        if final.exists():  # same microsecond: keep names unique and ordered
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S.%f")
            final = dest / stamp
        ensure_writable(dest)
        partial = dest / f"{stamp}{PARTIAL_SUFFIX}"
        args = ["-a", "--delete"]
        if previous is not None:
            args.append(f"--link-dest={previous.resolve()}")
        r = _rsync([*args, f"{source}/", f"{partial}/"])
        warnings = []
        if r.returncode in WARNING_CODES:
            files = _failed_files(r.stderr)
            warnings.append(f"{WARNING_CODES[r.returncode]} (rsync exit {r.returncode}): "
                            f"{', '.join(files) or r.stderr.strip()[-300:]}")
        elif r.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise VmfError(f"backup of {source} to {dest} failed (rsync exit {r.returncode}): "
                           f"{r.stderr.strip()[-400:]}")
        partial.rename(final)
        return BackupResult(final, previous, warnings)


class BackupLoop:
    """Runs ``backup_once`` every ``interval`` seconds in a thread until ``stop``."""

    def __init__(self, source: Path, dest: Path, interval: float, on_result=None):
        self.source, self.dest, self.interval = Path(source), Path(dest), interval
        self.on_result = on_result or (lambda result: None)
        self.results: list[BackupResult] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"backup {source}", daemon=True)

    def start(self) -> "BackupLoop":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def run_once(self) -> BackupResult | None:
        try:
            result = backup_once(self.source, self.dest)
        except VmfError as exc:
            self.errors.append(str(exc))
            return None
        self.results.append(result)
        self.on_result(result)
        return result

    def stop(self) -> None:
        """Stop and wait: a backup in progress completes (no partial snapshot is left)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
