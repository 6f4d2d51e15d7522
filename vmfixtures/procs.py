"""Processes we own: one identity (pid + start time), one way to wait, one way to kill.

A pid alone is not an identity: the kernel reuses pids, so a stale record
could make us kill or trust somebody else's process. Everything that records
a process (run.json, the ledger, mount and tunnel records) stores a
``ProcessId`` and checks both halves.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
from dataclasses import dataclass

import psutil

from .errors import Timeout

PR_SET_PDEATHSIG = 1
# Children this process spawned (QEMU, helpers): reaped here when they die, so
# that a VM killed by someone else does not linger as our zombie.
CHILDREN: dict[int, subprocess.Popen] = {}
START_TOLERANCE = 0.01  # psutil's start times are rounded to 10 ms (clock ticks)


@dataclass(frozen=True)
class ProcessId:
    """A pid and the time it started: a reused pid is never mistaken for ours."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        """The identity of running process ``pid`` (psutil.NoSuchProcess if there is none)."""
        return cls(pid, psutil.Process(pid).create_time())

    @classmethod
    def from_record(cls, record: dict | None) -> ProcessId | None:
        """From a stored ``{"pid", "create_time"}`` record (run.json, vm.json owner)."""
        if not record or record.get("pid") is None:
            return None
        return cls(int(record["pid"]), float(record["create_time"]))

    def record(self) -> dict:
        return {"pid": self.pid, "create_time": self.started}

    def process(self) -> psutil.Process | None:
        """The live process if it is still this one (not a zombie, not a reused pid)."""
        if not process_alive(self.pid):
            return None
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > START_TOLERANCE or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def kill_and_wait(self, timeout: float = 10.0) -> None:
        """SIGKILL it (if it is still this process) and return once it has really gone."""
        kill(self.process(), timeout)

    def __str__(self) -> str:
        return f"pid {self.pid}"


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (and is reaped if it is our child)."""
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del CHILDREN[pid]
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_process(pid: int, started: float) -> psutil.Process | None:
    """Shorthand for ``ProcessId(pid, started).process()``."""
    return ProcessId(pid, started).process()


def wait_exit(pid: int, timeout: float) -> bool:
    """Block until ``pid`` terminates (zombie or reaped) or ``timeout``; True if it did.

    A pidfd becomes readable when the process exits, whoever its parent is,
    so this is an event wait, and it does not mistake a zombie for a survivor.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        exited = bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
    if exited and pid in CHILDREN:
        CHILDREN.pop(pid).wait()  # reap our own child
    return exited


def kill(proc: psutil.Process | None, timeout: float = 10.0) -> None:
    """SIGKILL and wait until the process has really terminated."""
    if proc is None:
        return
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return
    if not wait_exit(proc.pid, timeout):
        raise Timeout(f"pid {proc.pid} ({_name(proc)}) survived SIGKILL for {timeout:.0f}s")


def stop_child(proc: subprocess.Popen, grace: float) -> bool:
    """SIGTERM a child, SIGKILL it if it outlives ``grace`` seconds, and reap it. True if it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.terminate()
    try:
        proc.wait(timeout=grace)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def die_with_parent() -> None:
    """Run in a child before exec: SIGKILL it when its parent dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_THP_DISABLE = 41


def no_huge_pages_for_children() -> None:
    """Children started from now on (QEMU) get no transparent huge pages; the flag survives fork and exec.

    QEMU asks for huge pages on its translated-code buffer (TCG): touching one byte of a 2 MiB page
    makes it all private, which tripled an idle VM's unshared memory. Set on this process (cheap,
    idempotent) rather than in a pre-exec hook, which is unsafe in the daemon's threads."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


def owner_record(pid: int | None) -> dict | None:
    """Who owns a VM: pid and start time, so that a reused pid is not taken for the owner."""
    return ProcessId.of(pid).record() if pid else None


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"
