"""Backups of a running VM's disk: one full backup, then incrementals of the changed blocks.

The QEMU way (docs/interop/bitmaps.rst): a persistent dirty bitmap on the
VM's disk node tracks writes. A full backup is a QMP ``transaction`` that
adds (or resets) the bitmap and starts ``blockdev-backup sync=full``
atomically; an incremental is ``blockdev-backup sync=incremental`` with that
bitmap, which the job clears when it succeeds. Each incremental is a qcow2
file whose backing file is the previous backup, so a chain
(``full.qcow2 <- inc-0001.qcow2 <- ...``) reads as the disk at the time of
its last link, and ``qemu-img convert`` flattens it into a bootable disk.

A chain lives in ``DEST/<YYYY-MM>/`` (grouped by month) with ``chain.json``.
Files are written as ``*.partial`` and renamed when the job completed, so a
failed backup leaves no link that looks valid and never alters earlier ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

from ..errors import GuestError, NotFound, Timeout, VmfError

BITMAP = "vmfx-backup"
NODE = "disk0"


def _chain_dir(dest: Path) -> Path:
    return Path(dest) / datetime.now().strftime("%Y-%m")


def _meta(chain: Path) -> dict:
    path = chain / "chain.json"
    return json.loads(path.read_text()) if path.is_file() else {"links": []}


def _save_meta(chain: Path, meta: dict) -> None:
    tmp = chain / "chain.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, chain / "chain.json")


def _has_bitmap(qmp) -> bool:
    for dev in qmp.cmd("query-named-block-nodes"):
        if dev.get("node-name") == NODE:
            return any(b.get("name") == BITMAP for b in dev.get("dirty-bitmaps", []))
    return False


def _run_job(qmp, actions: list[dict], job: str, timeout: float) -> None:
    qmp.cmd("transaction", actions=actions)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            qmp.cmd("block-job-cancel", device=job)
            raise Timeout(f"disk backup job {job} did not finish within {timeout:.0f}s")
        try:
            event = qmp.pull_event(wait=float(remaining))
        except TimeoutError:
            continue
        if not event or event.get("data", {}).get("device") != job:
            continue
        if event["event"] == "BLOCK_JOB_COMPLETED":
            if event["data"].get("error"):
                raise GuestError(f"disk backup job failed: {event['data']['error']}")
            return
        if event["event"] == "BLOCK_JOB_CANCELLED":
            raise GuestError("disk backup job was cancelled")


def backup(driver, name: str, dest: Path, full: bool = False) -> dict:
    """Back up VM ``name``'s disk into the current chain in ``dest``: full when needed, else incremental."""
    spec = driver.spec(name)  # NotFound for an unknown VM
    if not driver.process(name):
        raise GuestError(f"VM '{name}' is not running; disk backups are taken from a running VM")
    chain = _chain_dir(dest)
    chain.mkdir(parents=True, exist_ok=True)
    meta = _meta(chain)
    with driver._qmp(name) as qmp:
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        incremental = bool(meta["links"]) and not full and meta.get("vm") == name and _has_bitmap(qmp)
        n = len(meta["links"]) if incremental else 0
        final = chain / (f"inc-{n:04d}.qcow2" if incremental else "full.qcow2")
        if not incremental and meta["links"]:  # a new full backup starts a new chain in its own folder
            chain = Path(dest) / datetime.now().strftime("%Y-%m-%dT%H%M%S")
            chain.mkdir(parents=True)
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
