#!/usr/bin/env python3
"""Time and size of a full vs an incremental VM disk backup after a fixed change, in one run.

The change: the guest writes --change-mb of random data and syncs. Where
libvirt is available, the same is meant to be measured with virtnbdbackup
(Debian's incremental backup tool for libvirt) on the same change; libvirt is
not installed here, so that part says it was skipped and why.

    python bench/backup.py [--runs 3] [--change-mb 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.boot import pct  # noqa: E402
from vmfixtures.backups import disks  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend  # noqa: E402
from vmfixtures.spec import VMSpec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--change-mb", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmfx-backup-"))
    driver = QemuBackend(storage=tmp / "vms", quiet=True)
    full_t, full_b, inc_t, inc_b = [], [], [], []
    try:
        driver.create(VMSpec("bench"), owner_pid=os.getpid())
        m = driver.machine("bench")
        for i in range(args.runs):
            t = time.perf_counter()
            link = disks.backup(driver, "bench", tmp / "bk", full=True)
            full_t.append(time.perf_counter() - t)
            full_b.append(link["bytes"])
            m.succeed(f"dd if=/dev/urandom of=/root/change-{i}.bin bs=1M count={args.change_mb} status=none && sync",
                      timeout=300)
            t = time.perf_counter()
            link = disks.backup(driver, "bench", tmp / "bk")
            inc_t.append(time.perf_counter() - t)
            inc_b.append(link["bytes"])
            assert link["kind"] == "incremental", link
    finally:
        for name in driver.names():
            driver.destroy(name)
        shutil.rmtree(tmp, ignore_errors=True)
    mib = 1024 ** 2
    print(f"accelerator: {driver.accel().name}; change between backups: {args.change_mb} MiB; p50 of {args.runs}:")
    print(f"  full backup          {pct(full_t, 50):6.2f} s  {pct(full_b, 50) / mib:8.1f} MiB")
    print(f"  incremental backup   {pct(inc_t, 50):6.2f} s  {pct(inc_b, 50) / mib:8.1f} MiB")
    print(f"  incremental / full: x{pct(inc_b, 50) / pct(full_b, 50):.3f} in size, "
          f"x{pct(inc_t, 50) / pct(full_t, 50):.2f} in time")
    if shutil.which("virsh") and shutil.which("virtnbdbackup"):
        print("  virtnbdbackup: libvirt is present, but the libvirt driver is not built yet; not measured")
    else:
        print("  virtnbdbackup: skipped (libvirt and virtnbdbackup are not installed on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
