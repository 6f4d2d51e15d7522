#!/usr/bin/env python3
"""SIGKILL the runner N times and the daemon N times, then count what leaked.

Runner trial: a runner (`vmfixtures lease hold`) leases a VM, is SIGKILLed;
the daemon must end its lease and destroy the VM.
Daemon trial: a runner holds a VM, the daemon is SIGKILLed, then the runner;
a new daemon must reclaim the VM when it starts.
After all trials the daemon is stopped and we count, under the benchmark's
private folder: QEMU processes, overlay disks, sockets, and run folders.

    python bench/chaos.py [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmfixtures.client import Client, start_daemon  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend, our_qemu_processes, our_relays, run_dirs_of  # noqa: E402
from vmfixtures.procs import wait_exit  # noqa: E402
from vmfixtures.scope import RunScope  # noqa: E402
from vmfixtures.testkit import Project, spawn_runner  # noqa: E402


def leftovers(root: Path, storage: Path) -> dict[str, list]:
    return {"qemu processes": [p.pid for p in our_qemu_processes(root)],
            "agent relays": [p.pid for p, folder in our_relays() if not folder.exists() or
                             (folder / "vm_dir").read_text().startswith(str(root))],
            "overlay disks": [str(p) for p in storage.rglob("disk.qcow2")] if storage.exists() else [],
            "sockets": [str(p) for p in root.rglob("*.sock") if p.name != "d.sock"]
            + [str(d) for d in run_dirs_of(root)],
            # a template's RAM (hundreds of MiB) belongs in a finished snapshot's folder, nowhere else
            "template RAM files": [str(p) for p in root.rglob(QemuBackend.RAM_FILE)
                                   if not (p.parent / "snapshot.json").is_file()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vmfx-chaos-"))
    os.environ["VMFIXTURES_STATE_DIR"] = str(root / "state")
    os.environ["VMFIXTURES_DAEMON_SOCKET"] = str(root / "d.sock")
    client = Client(root / "d.sock")
    start_daemon(client.socket_path)
    scope = RunScope(root / "runs")
    scope.start()
    project = Project(root / "project", scope)
    project.write_config({"vms": {"victim": {"memory": "256M"}}})
    runner_times, daemon_times, reclaimed_total = [], [], 0
    try:
        for i in range(args.trials):
            runner = spawn_runner(project, "victim", ttl=30)
            t = time.monotonic()
            runner.kill()
            lease = client.wait_lease_end(runner.lease_id, 30)
            assert lease["state"] == "ended", f"runner trial {i}: lease still active: {lease}"
            runner_times.append(time.monotonic() - t)
        for i in range(args.trials):
            runner = spawn_runner(project, "victim", ttl=30)
            pid = client.alive()["pid"]
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 10)
            runner.kill()
            t = time.monotonic()
            info = start_daemon(client.socket_path)
            reclaimed_total += len(info["reclaimed"])
            lease = client.wait_lease_end(runner.lease_id, 30)
            assert lease["state"] == "ended", f"daemon trial {i}: lease still active: {lease}"
            daemon_times.append(time.monotonic() - t)
    finally:
        client.stop(60)
        scope.finish()
    left = leftovers(root, scope.storage)
    print(f"{args.trials} runner SIGKILLs: lease ended and VM destroyed in "
          f"p50 {sorted(runner_times)[len(runner_times) // 2]:.2f}s, max {max(runner_times):.2f}s")
    print(f"{args.trials} daemon SIGKILLs: restart + reconcile + reap in "
          f"p50 {sorted(daemon_times)[len(daemon_times) // 2]:.2f}s, max {max(daemon_times):.2f}s "
          f"({reclaimed_total} leftovers reclaimed at start-ups)")
    for kind, items in left.items():
        print(f"leaked {kind}: {len(items)} {items[:5] if items else ''}")
    print("target: 0 leaked QEMU processes, agent relays, overlays, sockets or template RAM files:", "MET" if not any(left.values()) else "MISSED")
    return 1 if any(left.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
