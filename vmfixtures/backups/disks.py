"""Backups of a running VM's disk: one full backup, then incrementals of the changed blocks.

The QEMU way (docs/interop/bitmaps.rst): a persistent dirty bitmap on the
VM's disk node tracks writes. A full backup is a QMP ``transaction`` that
adds (or resets) the bitmap and starts ``blockdev-backup sync=full``
atomically; an incremental is ``blockdev-backup sync=incremental`` with that
bitmap, which the job clears when it succeeds. Each incremental is a qcow2
file whose backing file is the previous backup, so a chain
(``full.qcow2 <- inc-0001.qcow2 <- ...``) reads as the disk at the time of
its last link, and ``qemu-img convert`` flattens it into a bootable disk.

Chains are grouped by period (``--group-by month|quarter|half-year|year``):
the first backup of a period is full and starts ``DEST/<period>/`` (e.g.
``2026-11``, ``2026-Q4``, ``2026-H2``, ``2026``); later ones in the same period
are incremental. A forced full backup starts ``DEST/<period>.<n>/``. Each
chain keeps ``chain.json`` (VM, links, sizes). Files are written as
``*.partial`` and renamed when the job completed, so a failed backup leaves no
link that looks valid and never alters earlier ones.

``prune`` keeps the newest N chains; ``scrub`` removes the dirty bitmap from
the VM (the next backup is then full).

Exit codes (the CLI's): 3 unknown VM or chain, 5 qemu-img missing,
6 destination not writable, 8 QEMU refused or failed the job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from ..backends.base import DIRTY_BITMAPS
from ..backends.qemu import qmp_events
from ..errors import ConfigError, GuestError, MissingDependency, NotFound, Timeout, VmfError
from ..files import write_atomically
from .folders import ensure_writable

BITMAP = "vmfx-backup"
NODE = "disk0"


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


def _current_chain(dest: Path, name: str, period: str) -> Path | None:
    """The newest chain of VM ``name`` in this period, if any."""
    found = [c for c in Path(dest).glob(f"{period}*") if (c.name == period or c.name.startswith(period + "."))
             and _meta(c).get("vm") == name and _meta(c)["links"]]
    return max(found, key=lambda c: _meta(c)["links"][0]["at"]) if found else None


def _new_chain(dest: Path, period: str) -> Path:
    chain, n = Path(dest) / period, 1
    while chain.exists():
        n += 1
        chain = Path(dest) / f"{period}.{n}"
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


def _has_bitmap(qmp) -> bool:
    for dev in qmp.cmd("query-named-block-nodes"):
        if dev.get("node-name") == NODE:
            return any(b.get("name") == BITMAP for b in dev.get("dirty-bitmaps", []))
    return False


def _run_job(qmp, actions: list[dict], job: str, timeout: float) -> None:
    qmp.cmd("transaction", actions=actions)
    try:
        for event in qmp_events(qmp, timeout, f"disk backup job {job}"):
            if event.get("data", {}).get("device") != job:
                continue
            if event["event"] == "BLOCK_JOB_COMPLETED":
                if event["data"].get("error"):
                    raise GuestError(f"disk backup job failed: {event['data']['error']}")
                return
            if event["event"] == "BLOCK_JOB_CANCELLED":
                raise GuestError("disk backup job was cancelled")
    except Timeout:
        qmp.cmd("block-job-cancel", device=job)
        raise


def backup(driver, name: str, dest: Path, full: bool = False, group_by: str = "month") -> dict:
    """Back up VM ``name``'s disk: incremental into this period's chain, else full into a new one."""
    spec = driver.spec(name)  # NotFound for an unknown VM
    driver.require(DIRTY_BITMAPS, "a disk backup")
    period = period_name(datetime.now(), group_by)
    if not driver.process(name):
        raise GuestError(f"VM '{name}' is not running; disk backups are taken from a running VM")
    _check_dest(dest)
    with driver._qmp(name) as qmp:
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        chain = None if full else _current_chain(dest, name, period)
        incremental = chain is not None and _has_bitmap(qmp)
        if incremental:
            meta = _meta(chain)
            final = chain / f"inc-{len(meta['links']):04d}.qcow2"
        else:
            chain = _new_chain(dest, period)
            meta, final = {"links": []}, chain / "full.qcow2"
        partial = final.with_suffix(".partial")
        create = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if incremental:
            create += ["-b", meta["links"][-1]["file"], "-F", "qcow2"]
        subprocess.run([*create, str(partial), str(spec.disk)], check=True, capture_output=True)
        target = {"node-name": "vmfx-bk-target", "driver": "qcow2",
                  "file": {"driver": "file", "filename": str(partial)}}
        if incremental:
            target["backing"] = None  # the file names its backing; QEMU need not open it
        qmp.cmd("blockdev-add", **target)
        job = "vmfx-bk"
        try:
            if incremental:
                actions = [{"type": "blockdev-backup", "data": {"device": NODE, "target": "vmfx-bk-target",
                                                                  "sync": "incremental", "bitmap": BITMAP,
                                                                  "job-id": job}}]
            else:
                actions = []
                if _has_bitmap(qmp):
                    actions.append({"type": "block-dirty-bitmap-clear", "data": {"node": NODE, "name": BITMAP}})
                else:
                    actions.append({"type": "block-dirty-bitmap-add",
                                    "data": {"node": NODE, "name": BITMAP, "persistent": True}})
                actions.append({"type": "blockdev-backup", "data": {"device": NODE, "target": "vmfx-bk-target",
                                                                      "sync": "full", "job-id": job}})
            _run_job(qmp, actions, job, driver.accel().scale(600))
        except BaseException:
            partial.unlink(missing_ok=True)
            if not incremental:
                shutil.rmtree(chain, ignore_errors=True)  # the chain this full backup was to start
            raise
        finally:
            qmp.cmd("blockdev-del", **{"node-name": "vmfx-bk-target"})
    os.rename(partial, final)
    link = {"file": str(final), "kind": "incremental" if incremental else "full",
            "bytes": final.stat().st_blocks * 512, "at": time.time()}
    meta.update(vm=name, bitmap=BITMAP, disk_bytes=spec.disk)
    meta["links"].append(link)
    _save_meta(chain, meta)
    return link


def chains(dest: Path) -> list[dict]:
    """Every chain in ``dest`` with its links and sizes (`status --json`)."""
    out = []
    for chain in sorted(p for p in Path(dest).iterdir() if (p / "chain.json").is_file()) if Path(dest).is_dir() else []:
        meta = _meta(chain)
        out.append({"chain": str(chain), "vm": meta.get("vm"), "links": meta["links"],
                    "bytes": sum(l["bytes"] for l in meta["links"])})
    return out


def prune(dest: Path, keep: int, dry_run: bool = False) -> list[Path]:
    """Delete all but the newest ``keep`` chains (whole chains only: a link is useless without its base)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"--keep {keep!r}: keep at least 1 chain")
    found = sorted((Path(c["chain"]) for c in chains(dest)), key=lambda c: _meta(c)["links"][0]["at"])
    gone = found[:-keep]
    if not dry_run:
        for chain in gone:
            shutil.rmtree(chain)
    return gone


def scrub(driver, name: str) -> bool:
    """Remove the backup bitmap from the VM's disk; True if there was one. The next backup is full."""
    driver.spec(name)
    driver.require(DIRTY_BITMAPS, "scrubbing a backup bitmap")
    if not driver.process(name):
        raise GuestError(f"VM '{name}' is not running")
    with driver._qmp(name) as qmp:
        if not _has_bitmap(qmp):
            return False
        qmp.cmd("block-dirty-bitmap-remove", node=NODE, name=BITMAP)
        return True


def restore(chain: Path, out: Path) -> Path:
    """Flatten a chain (its last link and everything it stands on) into a standalone disk ``out``."""
    meta = _meta(Path(chain))
    if not meta["links"]:
        raise NotFound(f"{chain} holds no backup chain (no chain.json)")
    missing = [l["file"] for l in meta["links"] if not Path(l["file"]).is_file()]
    if missing:
        raise VmfError(f"backup chain {chain} has a missing link: {missing[0]}; nothing was restored")
    partial = out.with_suffix(".partial")
    r = subprocess.run(["qemu-img", "convert", "-O", "qcow2", meta["links"][-1]["file"], str(partial)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        partial.unlink(missing_ok=True)
        raise VmfError(f"restoring {chain} failed: {r.stderr.strip()}")
    os.rename(partial, out)
    return out
