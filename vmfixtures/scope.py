"""A spec run's scope: one folder that holds every VM the run starts.

The run records its pid (and start time) in ``owner.json``. VMs it boots
itself die with it (PR_SET_PDEATHSIG); VMs booted through the CLI on its
behalf carry it as owner. Whatever survives a run killed with SIGKILL is
reaped by the next run's ``start`` (or `vmfixtures gc`), because its owner
is provably gone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import paths
from .errors import NotFound
from .backends import Backend, backend_for, chosen, open_backend, recorded_backend
from .backends.qemu import clear_run_dir, our_qemu_processes, run_dirs_of
from .procs import kill, live_process

STARTING_GRACE = 60.0  # seconds a run folder may lack its owner record (it is being created)


@dataclass
class Leftovers:
    """What a scope found still alive or on disk after destroying everything."""

    processes: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.files or self.domains)

    def __str__(self) -> str:
        text = f"VM process pids {self.processes}, files {self.files}"
        return text + (f", libvirt domains {self.domains}" if self.domains else "")


class RunScope:
    """Owns the storage folder of one test run."""

    def __init__(self, root: Path | None = None, quiet: bool = True, backend: str | None = None):
        self.root = Path(root) if root else paths.state_dir() / "spec-runs"
        self.id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.dir = self.root / self.id
        self.quiet = quiet
        self.backend = chosen(backend)

    @property
    def storage(self) -> Path:
        return self.dir / "vms"

    def driver(self) -> Backend:
        """The backend this run creates its VMs on."""
        return open_backend(self.backend, self.storage, quiet=self.quiet)

    def start(self) -> list[str]:
        """Reap what dead runs left behind, then claim a fresh folder. Returns what was reaped."""
        reaped = self.reap_stale()
        self.storage.mkdir(parents=True)
        me = psutil.Process()
        (self.dir / "owner.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
        return reaped

    def reap_stale(self) -> list[str]:
        reaped: list[str] = []
        if not self.root.is_dir():
            return reaped
        for run in sorted(self.root.iterdir()):
            try:
                owner = json.loads((run / "owner.json").read_text())
                alive = live_process(owner["pid"], owner["create_time"]) is not None
            except (OSError, ValueError, KeyError):
                # no readable owner: a run that died while starting, or one starting right now beside us
                alive = _younger_than(run, STARTING_GRACE)
            if alive or run == self.dir:
                continue
            leftovers = RunScope._destroy_all(run / "vms", quiet=self.quiet)
            shutil.rmtree(run, ignore_errors=True)
            reaped.append(f"run {run.name}: {len(leftovers)} VM(s) destroyed")
        return reaped

    def concerns(self, path: str | None) -> bool:
        """Whether an observer finding about ``path`` is this run's to judge. Runs side by side share the
        daemon and its observer; what lies in another run's folder is that run's. A path in this run's
        folder, in no run's (the pool, a helper gone astray) or none at all concerns every run."""
        if not path:
            return True
        return Path(path).is_relative_to(self.dir) or not Path(path).is_relative_to(self.root)

    def destroy_vms(self) -> Leftovers:
        """Destroy every VM of this run, those of other storages in its folder too (a scenario's second
        runner keeps its VMs in the project folder, leased from the daemon under a lease of its own: the
        run's folder must not be removed from under them before the daemon has reaped them); report
        anything that survived."""
        RunScope._destroy_all(self.storage, quiet=self.quiet)
        if self.dir.is_dir():
            for storage in sorted({p.parent.parent for p in self.dir.rglob("vm.json")} - {self.storage}):
                RunScope._destroy_all(storage, quiet=self.quiet)
        return self.leftovers()

    def leftovers(self) -> Leftovers:
        procs = [p.pid for p in our_qemu_processes(self.dir)]
        files = [str(p) for p in self.storage.rglob("*")] if self.storage.exists() else []
        return Leftovers(procs, files + [str(d) for d in run_dirs_of(self.dir)], _domains_of(self.storage, self.backend))

    def finish(self) -> Leftovers:
        """Destroy everything and remove the run's folder. Idempotent."""
        leftovers = self.destroy_vms()
        if not leftovers:
            shutil.rmtree(self.dir, ignore_errors=True)
        return leftovers

    @staticmethod
    def _destroy_all(storage: Path, quiet: bool = True) -> list[str]:
        if not storage.is_dir():
            return []
        names = [d.name for d in sorted(storage.iterdir()) if recorded_backend(d)]
        for name in names:
            try:
                backend_for(storage, name, quiet=quiet).destroy(name)
            except NotFound:
                pass  # destroyed meanwhile by another reaper
        for proc in our_qemu_processes(storage):  # QEMU whose folder is already gone
            kill(proc)
        for stray in storage.iterdir():  # folders of VMs that never got a vm.json, stray files
            if stray.is_dir() and not stray.is_symlink():
                clear_run_dir(stray)
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
        for run_dir in run_dirs_of(storage):  # socket folders whose VM folder is gone
            shutil.rmtree(run_dir, ignore_errors=True)
        return names


def _domains_of(storage: Path, backend: str) -> list[str]:
    """libvirt domains of ours still running for VMs under ``storage`` (only asked where libvirt is in use)."""
    if backend != "libvirt":
        return []
    from .backends.libvirt import our_domains

    where = str(Path(storage).resolve())
    return [d for d, s, _ in our_domains() if s == where]


def _younger_than(folder: Path, seconds: float) -> bool:
    try:
        return time.time() - folder.stat().st_mtime < seconds
    except OSError:
        return False
