#!/usr/bin/env python3
"""Lease-to-ready from the pre-restored pool vs restore on demand vs cold boot, in one run.

Uses a private daemon (own socket, ledger and pool in a temporary folder).
"lease to ready" ends when the VM is running, renamed, and answers its guest
agent: the request returns only then. Also prints the memory of idle pooled
VMs (RSS and PSS of their QEMU processes).

    python bench/lease.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from bench.boot import pct, row  # noqa: E402
from vmfixtures.client import Client, start_daemon  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend  # noqa: E402
from vmfixtures.procs import wait_exit  # noqa: E402
from vmfixtures.spec import VMSpec  # noqa: E402

TARGET_POOLED_MS = 100.0
TARGET_RESTORE_S = 1.5


def wait_idle(client: Client, n: int, timeout: float = 120) -> None:
    """The pool refills in the background; a benchmark may poll for it."""
    deadline = time.monotonic() + timeout
    while client.alive()["idle"] < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not refill to {n} idle VM(s) within {timeout:.0f}s")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmfx-lease-"))
    os.environ["VMFIXTURES_STATE_DIR"] = str(tmp / "state")
    client = Client(tmp / "d.sock")
    start_daemon(client.socket_path, ["--idle", "1", "--max-idle", "1"])
    storage = tmp / "vms"
    spec = VMSpec("bench")
    pooled, restored, cold, rss, pss = [], [], [], [], []
    try:
        lease = client.open_lease(scope="run", ttl=None)
        client.create(storage, spec.to_dict(), lease["id"])  # first use: template boot + snapshot
        client.vm("destroy", storage, name="bench")
        driver = QemuBackend(storage=storage, quiet=True)
        print(f"accelerator: {driver.accel().name} ({driver.accel().reason})")
        for _ in range(args.runs):
            wait_idle(client, 1)
            for proc in _pooled_qemus(tmp):
                mem = proc.memory_full_info()
                rss.append(mem.rss)
                pss.append(mem.pss)
            t = time.perf_counter()
            r = client.create(storage, spec.to_dict(), lease["id"])
            pooled.append(time.perf_counter() - t)
            assert r["source"] == "pool", r
            driver.machine("bench").succeed("true")
            client.vm("destroy", storage, name="bench")
        snapshot = next((tmp / "state" / "daemon" / "snapshots").iterdir())
        for _ in range(args.runs):
            t = time.perf_counter()
            boot = driver.create_from_snapshot(VMSpec("restored"), snapshot)
            driver.wait_restored("restored", boot)
            restored.append(time.perf_counter() - t)
            driver.destroy("restored")
        for _ in range(max(3, args.runs // 3)):
            t = time.perf_counter()
            driver.create(VMSpec("cold"))
            cold.append(time.perf_counter() - t)
            driver.destroy("cold")
    finally:
        health = client.alive()
        client.shutdown()
        if health:
            wait_exit(health["pid"], 60)

    print("VM ready for a scenario:")
    print(row("lease from the pre-restored pool", pooled, "ms", 1000))
    print(row("restore on demand (snapshot -> ready)", restored, "s"))
    print(row("cold boot (baseline)", cold, "s"))
    print(f"  cold boot / pooled lease: x{pct(cold, 50) / pct(pooled, 50):.0f}; "
          f"cold boot / restore: x{pct(cold, 50) / pct(restored, 50):.1f}")
    mib = 1024 ** 2
    print(f"memory per idle pooled VM (512 MiB guest): RSS p50 {pct(rss, 50) / mib:.0f} MiB, "
          f"PSS p50 {pct(pss, 50) / mib:.0f} MiB (n={len(rss)})")
    ok = [pct(pooled, 50) * 1000 <= TARGET_POOLED_MS, pct(restored, 50) <= TARGET_RESTORE_S,
          pct(cold, 50) >= 10 * pct(pooled, 50)]
    print(f"targets: pooled p50 <= {TARGET_POOLED_MS:.0f}ms {'MET' if ok[0] else 'MISSED'}; "
          f"restore p50 <= {TARGET_RESTORE_S}s {'MET' if ok[1] else 'MISSED'}; "
          f"cold >= 10x pooled {'MET' if ok[2] else 'MISSED'}")
    return 0


def _pooled_qemus(root: Path) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if any(a.startswith("guest=vmfx-p") for a in proc.info["cmdline"] or []) and \
                str(proc.info.get("cwd") or "").startswith(str(root)):
            out.append(proc)
    return out


if __name__ == "__main__":
    sys.exit(main())
