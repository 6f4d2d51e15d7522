"""Backups of a running VM's disk: one full backup, then incrementals of the changed blocks.

Each backup is a *checkpoint*: a point in the disk's history from which the
hypervisor tracks the blocks written since (a persistent dirty bitmap in the
VM's qcow2). A full backup copies the whole disk and creates a checkpoint; an
incremental one copies the blocks written since the chain's last checkpoint
and creates the next one, atomically with the copy's start. Two backends do
this their own way, with the same result on disk:

- qemu (docs/interop/bitmaps.rst): a QMP ``transaction`` adds the new bitmap
  and starts ``blockdev-backup`` (``sync=full``, or ``sync=bitmap`` with the
  last checkpoint's bitmap and ``bitmap-mode=never``, so every checkpoint's
  bitmap keeps counting writes since it was made, as libvirt's do);
- libvirt (formatbackup, formatcheckpoint, kbase/incrementalbackupinternals):
  ``virDomainBackupBegin`` in push mode into the file we created, with a
  ``<domaincheckpoint>`` made at the same instant and ``<incremental>`` naming
  the last checkpoint. libvirt lists the checkpoints (``virsh checkpoint-list``).

Each incremental is a qcow2 file whose backing file is the previous link, so a
chain (``full.qcow2 <- inc-0001.qcow2 <- ...``) reads as the disk at the time
of its last link, and ``qemu-img convert`` flattens it into a bootable disk.

Chains live in ``DEST/<vm>/<period>/`` and are grouped by period
(``--group-by month|quarter|half-year|year``): the first backup of a period is
full and starts ``<period>/`` (e.g. ``2026-11``, ``2026-Q4``, ``2026-H2``,
``2026``); later ones are incremental while the chain's last checkpoint still
exists. A forced full backup starts ``<period>.<n>/``; a full backup drops the
VM's older checkpoints of ours (``vmfx.*``), which no chain can extend any
more. Each chain keeps ``chain.json`` (VM, links, sizes, checkpoints). Files
are written as ``*.partial`` and renamed when the copy completed, so a failed
backup leaves no link that looks valid and never alters earlier ones.

``prune`` keeps each VM's newest N chains; ``scrub`` deletes one named
checkpoint, or all of ours (the next backup is then full).

Exit codes (the CLI's): 3 unknown VM, pattern, chain or checkpoint,
5 qemu-img missing, 6 destination not writable, 8 the hypervisor refused or
failed the copy, 12 the destination is full.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from ..backends.base import DIRTY_BITMAPS
from ..errors import (
    ConfigError,
    GuestError,
    MissingDependency,
    NoSpace,
    NotFound,
    Timeout,
    VmfError,
)
from ..files import write_atomically
from .folders import ensure_writable

NODE = "disk0"          # the qemu backend's block node of the system disk
DISK = "vda"            # the libvirt backend's target of the system disk
CHECKPOINT_PREFIX = "vmfx."  # checkpoints (bitmaps) of ours; others (virtnbdbackup.N, ...) are never touched
STAGING = "/var/tmp"    # where a libvirt QEMU writes a copy whose destination it cannot see

PERIODS = ("month", "quarter", "half-year", "year")


def period_name(when: datetime, group_by: str) -> str:
    """The folder name of the period ``when`` falls in."""
    if group_by == "month":
        return when.strftime("%Y-%m")
    if group_by == "quarter":
        return f"{when.year}-Q{(when.month - 1) // 3 + 1}"
    if group_by == "half-year":
        return f"{when.year}-H{1 if when.month <= 6 else 2}"
    if group_by == "year":
        return str(when.year)
    raise ConfigError(f"--group-by {group_by!r}: use one of {', '.join(PERIODS)}")


def new_checkpoint_name() -> str:
    """A checkpoint name that sorts by time and is never reused (also valid as a QEMU bitmap name)."""
    return f"{CHECKPOINT_PREFIX}{datetime.now():%Y%m%dT%H%M%S.%f}"


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


# -- the hypervisor's side: checkpoints and the copy --------------------------------------------
class QemuCheckpoints:
    """Checkpoints as persistent dirty bitmaps on the qemu backend's disk node, through QMP."""

    def __init__(self, driver, name: str):
        self.driver, self.name = driver, name

    def list(self) -> list[str]:
        with self.driver._qmp(self.name) as qmp:
            return self._list(qmp)

    @staticmethod
    def _list(qmp) -> list[str]:
        for dev in qmp.cmd("query-named-block-nodes"):
            if dev.get("node-name") == NODE:
                return sorted(b["name"] for b in dev.get("dirty-bitmaps", [])
                              if b.get("name", "").startswith(CHECKPOINT_PREFIX))
        return []

    def delete(self, checkpoint: str) -> None:
        with self.driver._qmp(self.name) as qmp:
            qmp.cmd("block-dirty-bitmap-remove", node=NODE, name=checkpoint)

    def copy(self, target: Path, since: str | None, new: str, timeout: float) -> None:
        """Copy the disk (or what changed since checkpoint ``since``) into qcow2 ``target``, which
        exists, and create checkpoint ``new`` at the instant the copy starts."""
        from ..backends.qemu import qmp_events

        job, node = "vmfx-bk", "vmfx-bk-target"
        with self.driver._qmp(self.name) as qmp:
            qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
            spec = {"node-name": node, "driver": "qcow2", "file": {"driver": "file", "filename": str(target)}}
            if since:
                spec["backing"] = None  # the file names its backing; QEMU need not open it
            qmp.cmd("blockdev-add", **spec)
            try:
                backup = {"device": NODE, "target": node, "job-id": job, "sync": "full"}
                if since:
                    backup.update(sync="bitmap", bitmap=since, **{"bitmap-mode": "never"})
                qmp.cmd("transaction", actions=[
                    {"type": "block-dirty-bitmap-add", "data": {"node": NODE, "name": new, "persistent": True}},
                    {"type": "blockdev-backup", "data": backup}])
                try:
                    for event in qmp_events(qmp, timeout, f"disk backup job {job}"):
                        if event.get("data", {}).get("device") != job:
                            continue
                        if event["event"] == "BLOCK_JOB_COMPLETED":
                            if event["data"].get("error"):
                                raise _copy_failed(event["data"]["error"], target)
                            return
                        if event["event"] == "BLOCK_JOB_CANCELLED":
                            raise GuestError("disk backup job was cancelled")
                except BaseException:
                    _swallow(qmp.cmd, "block-job-cancel", device=job)
                    _swallow(qmp.cmd, "block-dirty-bitmap-remove", node=NODE, name=new)
                    raise
            finally:
                _swallow(qmp.cmd, "blockdev-del", **{"node-name": node})


class LibvirtCheckpoints:
    """Checkpoints as libvirt keeps them for the domain; the copy is a push-mode backup job."""

    def __init__(self, driver, name: str):
        self.driver, self.name = driver, name

    def _dom(self):
        dom = self.driver._domain(self.name)
        if dom is None:
            raise GuestError(f"VM '{self.name}' is not running; disk backups are taken from a running VM")
        return dom

    def list(self) -> list[str]:
        return sorted(c.getName() for c in self._dom().listAllCheckpoints(0)
                      if c.getName().startswith(CHECKPOINT_PREFIX))

    def delete(self, checkpoint: str) -> None:
        from ..backends.libvirt import _libvirt, _why

        try:
            self._dom().checkpointLookupByName(checkpoint, 0).delete(0)
        except _libvirt().libvirtError as exc:
            raise GuestError(f"VM '{self.name}': libvirt could not delete checkpoint {checkpoint}: {_why(exc)}") \
                from None

    def copy(self, target: Path, since: str | None, new: str, timeout: float) -> None:
        """As QemuCheckpoints.copy. libvirt runs QEMU in a mount namespace of its own, made when the
        domain started: a destination mounted later is not there for QEMU. Then the copy is written
        to a staging folder QEMU sees (/var/tmp) and moved in."""
        proc = self.driver.process_id(self.name)
        if proc is None or _visible_to(proc.pid, target.parent):
            return self._copy(target, since, new, timeout)
        stage = Path(tempfile.mkdtemp(prefix="vmfx-backup-", dir=STAGING))
        try:
            staged = stage / target.name
            shutil.copy2(target, staged)  # the empty qcow2 we made (its header names the backing link)
            self._copy(staged, since, new, timeout)
            r = subprocess.run(["cp", "--sparse=always", str(staged), str(target)], check=False,
                               capture_output=True, text=True)
            if r.returncode != 0:
                self._forget(new)
                raise _copy_failed(r.stderr.strip(), target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _copy(self, target: Path, since: str | None, new: str, timeout: float) -> None:
        from ..backends.libvirt import _libvirt, _why, job_completed

        libvirt = _libvirt()
        dom = self._dom()
        incremental = f"<incremental>{since}</incremental>" if since else ""
        backup = (f"<domainbackup mode='push'>{incremental}<disks><disk name='{DISK}' backup='yes' type='file'>"
                  f"<driver type='qcow2'/><target file='{target}'/></disk></disks></domainbackup>")
        checkpoint = (f"<domaincheckpoint><name>{new}</name><disks><disk name='{DISK}' checkpoint='bitmap'/>"
                      f"</disks></domaincheckpoint>")
        with job_completed(dom.name()) as done:
            try:
                dom.backupBegin(backup, checkpoint, libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
            except libvirt.libvirtError as exc:
                raise GuestError(f"VM '{self.name}': libvirt refused the backup: {_why(exc)}") from None
            deadline = time.monotonic() + timeout
            while not done.wait(1.0):  # the event, or (missed) no job left
                if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                    break
                if time.monotonic() > deadline:
                    _swallow(dom.abortJob)
                    self._forget(new)
                    raise Timeout(f"VM '{self.name}': the disk backup did not finish within {timeout:.0f}s")
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if not stats.get("success", True):
            self._forget(new)
            raise _copy_failed(stats.get("errmsg") or "the backup job failed", target)
        _wait_released(self.driver.process_id(self.name), target, timeout)


    def _forget(self, checkpoint: str) -> None:
        if checkpoint in self.list():
            self.delete(checkpoint)


def _wait_released(proc, path: Path, timeout: float) -> None:
    """Wait until QEMU has closed the backup's target. libvirt reports the job completed before QEMU
    has let go of the file, and the close still writes it (seen under load: a backup that had
    returned changed size and time a moment later)."""
    if proc is None:
        return
    target = str(Path(path).resolve())
    folder = f"/proc/{proc.pid}/fd"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            held = [fd for fd in os.listdir(folder) if _readlink(f"{folder}/{fd}") == target]
        except OSError:
            return  # QEMU is gone: nothing holds the file
        if not held:
            return
        time.sleep(0.01)
    raise Timeout(f"QEMU (pid {proc.pid}) still holds {target} {timeout:.0f}s after the backup job completed")


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _visible_to(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` sees ``folder`` as we do (its mount namespace may differ)."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/root{Path(folder).resolve()}"), os.stat(folder)
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _swallow(fn, *args, **kwargs):
    """Clean-up that must not hide the error being raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return exc


def _copy_failed(why: str, target: Path) -> VmfError:
    if "No space left" in why or "ENOSPC" in why:
        return NoSpace(f"the backup destination {target.parent.parent.parent} is full ({why}); "
                       "nothing was changed")
    return GuestError(f"disk backup job failed: {why}")


def checkpoints_of(driver, name: str):
    """The checkpoint keeper of VM ``name``'s backend."""
    return LibvirtCheckpoints(driver, name) if driver.name == "libvirt" else QemuCheckpoints(driver, name)


# -- chains on disk -------------------------------------------------------------------------
def _current_chain(vm_dest: Path, name: str, period: str) -> Path | None:
    """The newest chain of VM ``name`` in this period, if any."""
    found = [c for c in Path(vm_dest).glob(f"{period}*") if (c.name == period or c.name.startswith(period + "."))
             and _meta(c).get("vm") == name and _meta(c)["links"]]
    return max(found, key=lambda c: _meta(c)["links"][0]["at"]) if found else None


def _new_chain(vm_dest: Path, period: str) -> Path:
    chain, n = Path(vm_dest) / period, 1
    while chain.exists():
        n += 1
        chain = Path(vm_dest) / f"{period}.{n}"
    chain.mkdir(parents=True)
    return chain


def _check_dest(dest: Path) -> None:
    if shutil.which("qemu-img") is None:
        raise MissingDependency("'qemu-img' not found: install the Debian package 'qemu-utils'")
    ensure_writable(Path(dest))


def _meta(chain: Path) -> dict:
    path = chain / "chain.json"
    return json.loads(path.read_text()) if path.is_file() else {"links": []}


def _save_meta(chain: Path, meta: dict) -> None:
    write_atomically(chain / "chain.json", json.dumps(meta, indent=2) + "\n")


def running_matches(driver_for, names: list[str], pattern: str) -> list[str]:
    """The running VMs among ``names`` that ``pattern`` (shell-style) matches; NotFound when none."""
    found = [n for n in sorted(names) if fnmatch.fnmatchcase(n, pattern) and driver_for(n).process(n)]
    if not found:
        raise NotFound(f"no running VM matches '{pattern}'")
    return found


def backup(driver, name: str, dest: Path, full: bool = False, group_by: str = "month") -> dict:
    """Back up VM ``name``'s disk: incremental into this period's chain, else full into a new one."""
    spec = driver.spec(name)  # NotFound for an unknown VM
    driver.require(DIRTY_BITMAPS, "a disk backup")
    period = period_name(datetime.now(), group_by)
    if not driver.process(name):
        raise GuestError(f"VM '{name}' is not running; disk backups are taken from a running VM")
    _check_dest(dest)
    keeper = checkpoints_of(driver, name)
    existing = keeper.list()
    vm_dest = Path(dest) / name
    chain = None if full else _current_chain(vm_dest, name, period)
    since = None
    if chain is not None:
        last = _meta(chain)["links"][-1].get("checkpoint")
        since = last if last in existing else None  # scrubbed: the chain cannot go on
    new_chain = since is None
    if new_chain:
        chain = None  # an earlier chain of the period is never touched again
    partial = final = link = None
    try:
        if new_chain:
            chain = _new_chain(vm_dest, period)
            meta, final = {"links": []}, chain / "full.qcow2"
        else:
            meta = _meta(chain)
            final = chain / f"inc-{len(meta['links']):04d}.qcow2"
        partial = final.with_suffix(".partial")
        create = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if not new_chain:
            create += ["-b", meta["links"][-1]["file"], "-F", "qcow2"]
        r = subprocess.run([*create, str(partial), str(spec.disk)], check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise _copy_failed(r.stderr.strip(), partial) if "No space" in r.stderr \
                else VmfError(f"qemu-img could not create {partial}: {r.stderr.strip()}")
        checkpoint = new_checkpoint_name()
        keeper.copy(partial, since, checkpoint, driver.accel().scale(600))
        os.rename(partial, final)
        link = {"file": str(final), "kind": "full" if new_chain else "incremental",
                "bytes": final.stat().st_blocks * 512, "at": time.time(), "checkpoint": checkpoint}
        meta.update(vm=name, disk_bytes=spec.disk, backend=driver.name)
        meta["links"].append(link)
        _save_meta(chain, meta)
    except BaseException as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)
        if new_chain and chain is not None:
            shutil.rmtree(chain, ignore_errors=True)  # the chain this full backup was to start
        elif link is not None:
            final.unlink(missing_ok=True)  # renamed, but chain.json could not say so
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NoSpace(f"the backup destination {dest} is full; nothing was changed") from None
        raise
    if new_chain:  # older chains can no longer be extended: their checkpoints only slow the disk down
        for old in existing:
            keeper.delete(old)
    return link


def chains(dest: Path) -> list[dict]:
    """Every chain in ``dest`` (``DEST/<vm>/<chain>``), oldest first, with its links and sizes."""
    out = []
    dest = Path(dest)
    folders = [c for vm in sorted(dest.iterdir()) if vm.is_dir() for c in vm.iterdir()
               if (c / "chain.json").is_file()] if dest.is_dir() else []
    for chain in folders:
        meta = _meta(chain)
        if not meta["links"]:
            continue
        out.append({"chain": str(chain), "vm": meta.get("vm"), "links": meta["links"],
                    "bytes": sum(l["bytes"] for l in meta["links"])})
    return sorted(out, key=lambda c: c["links"][0]["at"])


def status(dest: Path, driver_for) -> dict:
    """The chains in ``dest`` and, for each VM they belong to, its state and current checkpoints
    (``driver_for(vm)`` opens the VM's backend, None when the VM no longer exists)."""
    found = chains(dest)
    vms = {}
    for vm in sorted({c["vm"] for c in found}):
        driver = driver_for(vm)
        running = bool(driver and driver.process(vm))
        cps = checkpoints_of(driver, vm).list() if running else []
        mine = [c for c in found if c["vm"] == vm]
        last = mine[-1]["links"][-1].get("checkpoint") if mine else None
        vms[vm] = {"state": "running" if running else ("stopped" if driver else "missing"), "checkpoints": cps,
                   "chains": len(mine), "next": "incremental" if last in cps else "full"}
    return {"chains": found, "vms": vms}


def prune(dest: Path, keep: int, dry_run: bool = False) -> list[Path]:
    """Delete all but each VM's newest ``keep`` chains (whole chains only: a link is useless without its base)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"--keep {keep!r}: keep at least 1 chain")
    by_vm: dict[str, list[Path]] = {}
    for c in chains(dest):  # oldest first
        by_vm.setdefault(c["vm"], []).append(Path(c["chain"]))
    gone = [chain for found in by_vm.values() for chain in found[:-keep]]
    if not dry_run:
        for chain in gone:
            shutil.rmtree(chain)
    return gone


def scrub(driver, name: str, checkpoint: str | None = None) -> list[str]:
    """Delete checkpoint ``checkpoint`` of VM ``name``, or every one of ours; returns what was deleted.
    A chain whose last checkpoint is gone cannot go on: its VM's next backup is full."""
    driver.spec(name)
    driver.require(DIRTY_BITMAPS, "scrubbing backup checkpoints")
    if not driver.process(name):
        raise GuestError(f"VM '{name}' is not running")
    keeper = checkpoints_of(driver, name)
    existing = keeper.list()
    if checkpoint is not None and checkpoint not in existing:
        raise NotFound(f"VM '{name}' has no checkpoint '{checkpoint}' (it has: {', '.join(existing) or 'none'})")
    gone = [checkpoint] if checkpoint else existing
    for cp in gone:
        keeper.delete(cp)
    return gone


def restore(chain: Path, out: Path) -> Path:
    """Flatten a chain (its last link and everything it stands on) into a standalone disk ``out``."""
    meta = _meta(Path(chain))
    if not meta["links"]:
        raise NotFound(f"{chain} holds no backup chain (no chain.json)")
    missing = [l["file"] for l in meta["links"] if not Path(l["file"]).is_file()]
    if missing:
        raise VmfError(f"backup chain {chain} has a missing link: {missing[0]}; nothing was restored")
    partial = out.with_suffix(".partial")
    r = subprocess.run(["qemu-img", "convert", "-O", "qcow2", meta["links"][-1]["file"], str(partial)], check=False,
                       capture_output=True, text=True)
    if r.returncode != 0:
        partial.unlink(missing_ok=True)
        raise VmfError(f"restoring {chain} failed: {r.stderr.strip()}")
    os.rename(partial, out)
    return out
