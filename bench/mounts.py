#!/usr/bin/env python3
"""Throughput of a 100 MB file through a host-folder mount, against copying it with SFTP, in one run.

Inside the guest: write 100 MB into the mounted folder (lands on the host),
read it back (comes from the host, after dropping the guest's page cache).
Baseline: the same file copied host -> guest and guest -> host with `scp -s`
(the SFTP protocol) over the same SSH port forward.

    python bench/mounts.py [--mb 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.boot import pct  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend  # noqa: E402
from vmfixtures.mounts import Mounts  # noqa: E402
from vmfixtures.spec import VMSpec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmfx-mounts-"))
    share = tmp / "share"
    share.mkdir()
    blob = tmp / "blob.bin"
    blob.write_bytes(os.urandom(args.mb * 1024 * 1024))
    driver = QemuBackend(storage=tmp / "vms", quiet=True)
    results: dict[str, list[float]] = {k: [] for k in ("mount write", "mount read", "sftp to guest", "sftp to host")}
    try:
        driver.create(VMSpec("bench", memory=1024 * 1024**2, disk=4 * 1024**3), owner_pid=os.getpid())
        m = driver.machine("bench")
        Mounts(driver, "bench").mount(share, "/mnt/share")
        scp = ["scp", "-s", "-q", "-i", str(m.ssh.key_path), "-P", str(m.ssh_port),
               "-o", f"UserKnownHostsFile={driver.known_hosts('bench')}", "-o", "StrictHostKeyChecking=yes"]
        count = f"count={args.mb}"
        for _ in range(args.runs):
            (share / "out.bin").unlink(missing_ok=True)
            t = time.perf_counter()
            m.succeed(f"dd if=/dev/zero of=/mnt/share/out.bin bs=1M {count} conv=fsync status=none", timeout=600)
            results["mount write"].append(time.perf_counter() - t)
            (share / "in.bin").write_bytes(blob.read_bytes())
            m.succeed("sync; echo 3 > /proc/sys/vm/drop_caches")
            t = time.perf_counter()
            m.succeed("cat /mnt/share/in.bin > /dev/null", timeout=600)
            results["mount read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([*scp, str(blob), "root@127.0.0.1:/root/in.bin"], check=True)
            results["sftp to guest"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([*scp, "root@127.0.0.1:/root/in.bin", str(tmp / "back.bin")], check=True)
            results["sftp to host"].append(time.perf_counter() - t)
    finally:
        for name in driver.names():
            driver.destroy(name)
    print(f"accelerator: {driver.accel().name}; {args.mb} MB file, {args.runs} run(s), p50:")
    for label, times in results.items():
        print(f"  {label:<16} {pct(times, 50):6.2f} s  {args.mb / pct(times, 50):7.1f} MB/s")
    print(f"  mount read / sftp to guest: x{pct(results['sftp to guest'], 50) / pct(results['mount read'], 50):.2f} "
          f"throughput; mount write / sftp to host: "
          f"x{pct(results['sftp to host'], 50) / pct(results['mount write'], 50):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
