#!/usr/bin/env python3
"""Disk backups, ours against virtnbdbackup, on one libvirt VM and the same changes, in one run.

For each change size (default 1, 64 and 512 MiB) and each tool: a full backup
of the running VM, then the guest writes that much random data and syncs, an
incremental backup, and a restore of the chain into a standalone disk image.
Times are wall-clock of each tool's command line (ours: ``vmfixtures vm
backup``; restore: the chain flattened with ``qemu-img convert``, which is
what ``vm restore-backup`` does before it boots; theirs: ``virtnbdbackup`` and
``virtnbdrestore``). Sizes are what each backup added to its destination, in
allocated blocks. Between tools the checkpoints are deleted (virtnbdbackup
refuses to work beside checkpoints it did not make) and the guest trims its
file system, so every full backup reads the same disk.

    python bench/backup.py [--sizes 1,64,512] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.boot import pct
from vmfixtures.backends import open_backend
from vmfixtures.backups import disks
from vmfixtures.spec import VMSpec

MIB = 1024 ** 2


def allocated(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, check=False, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0 or " ERROR " in r.stderr or " CRITICAL " in r.stderr:
        raise SystemExit(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return took


class Ours:
    name = "vmfixtures"

    def __init__(self, driver, vm: str):
        self.driver, self.vm = driver, vm
        self.cli = [sys.executable, "-m", "vmfixtures", "--quiet", "--storage", str(driver.storage)]

    def backup(self, dest: Path, full: bool) -> float:
        return timed([*self.cli, "vm", "backup", self.vm, str(dest), *(["--full"] if full else [])])

    def restore(self, dest: Path, out: Path) -> float:
        chain = Path(disks.chains(dest)[-1]["chain"])
        t = time.perf_counter()
        out.mkdir()
        disks.restore(chain, out / "disk.qcow2")
        return time.perf_counter() - t

    def forget(self) -> None:
        disks.scrub(self.driver, self.vm)


class Virtnbdbackup:
    name = "virtnbdbackup"

    def __init__(self, driver, vm: str):
        self.driver, self.domain = driver, driver.domain_name(vm)
        self.vm = vm

    def backup(self, dest: Path, full: bool) -> float:
        return timed(["virtnbdbackup", "-d", self.domain, "-l", "full" if full else "inc", "-o", str(dest), "-n"])

    def restore(self, dest: Path, out: Path) -> float:
        return timed(["virtnbdrestore", "-i", str(dest), "-o", str(out), "-n"])

    def forget(self) -> None:
        dom = self.driver._domain(self.vm)
        for cp in dom.listAllCheckpoints(0):
            if cp.getName().startswith("virtnbdbackup."):
                cp.delete(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,64,512", help="MiB the guest writes between full and incremental")
    ap.add_argument("--runs", type=int, default=1, help="repetitions of each measurement (p50 shown)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not shutil.which("virtnbdbackup"):
        print("virtnbdbackup is not installed (Debian package virtnbdbackup): nothing to compare with")
        return 5
    tmp = Path(tempfile.mkdtemp(prefix="vmfx-backup-bench-", dir="/var/tmp"))
    driver = open_backend("libvirt", tmp / "vms", quiet=True)
    figures: dict[tuple[str, int], dict[str, list[float]]] = {}
    started = time.perf_counter()
    try:
        driver.create(VMSpec("bench"), owner_pid=os.getpid())
        guest = driver.machine("bench")
        tools = [Ours(driver, "bench"), Virtnbdbackup(driver, "bench")]
        for size in sizes:
            for tool in tools:
                f = figures.setdefault((tool.name, size), {k: [] for k in
                                                          ("full_s", "full_b", "inc_s", "inc_b", "restore_s", "write_s")})
                for _ in range(args.runs):
                    dest, out = tmp / "dest", tmp / "restored"
                    # the last change's blocks are given back, so each full backup sees the same disk
                    guest.succeed("rm -f /root/change.bin && sync && fstrim /", timeout=300)
                    f["full_s"].append(tool.backup(dest, full=True))
                    f["full_b"].append(allocated(dest))
                    t = time.perf_counter()
                    guest.succeed(f"rm -f /root/change.bin && dd if=/dev/urandom of=/root/change.bin bs=1M "
                                  f"count={size} status=none && sync", timeout=1800)
                    f["write_s"].append(time.perf_counter() - t)
                    before = allocated(dest)
                    f["inc_s"].append(tool.backup(dest, full=False))
                    f["inc_b"].append(allocated(dest) - before)
                    f["restore_s"].append(tool.restore(dest, out))
                    tool.forget()
                    shutil.rmtree(dest)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        for name in driver.names():
            driver.destroy(name)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"accelerator: {driver.accel().name}; libvirt backend, one VM (2 GiB disk); "
          f"p50 of {args.runs} run(s); whole bench {time.perf_counter() - started:.0f} s")
    print(f"{'change':>7} {'tool':<14} {'full s':>7} {'full MiB':>9} {'inc s':>6} {'inc MiB':>8} {'restore s':>9}"
          f" {'(write s)':>9}")
    for size in sizes:
        for tool in ("vmfixtures", "virtnbdbackup"):
            f = {k: pct(v, 50) for k, v in figures[(tool, size)].items()}
            print(f"{size:>4} MiB {tool:<14} {f['full_s']:7.2f} {f['full_b'] / MIB:9.1f} {f['inc_s']:6.2f} "
                  f"{f['inc_b'] / MIB:8.1f} {f['restore_s']:9.2f} {f['write_s']:9.1f}")
        o = {k: pct(v, 50) for k, v in figures[("vmfixtures", size)].items()}
        t = {k: pct(v, 50) for k, v in figures[("virtnbdbackup", size)].items()}
        print(f"{size:>4} MiB ours/theirs:  full x{o['full_s'] / t['full_s']:.2f} time, x{o['full_b'] / t['full_b']:.2f} "
              f"size; incremental x{o['inc_s'] / t['inc_s']:.2f} time, x{o['inc_b'] / t['inc_b']:.2f} size; "
              f"restore x{o['restore_s'] / t['restore_s']:.2f} time")
    print("virtnbdbackup's sizes include the domain XML, kernel and initrd it saves with every backup.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
