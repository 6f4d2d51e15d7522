#!/usr/bin/env python3
"""Port forwarding: how fast a tunnel comes up, how fast a killed one is back, and what it costs per request.

One VM serves a page from its 127.0.0.1:8000; a local forward makes it
127.0.0.1:18090 on the host. Measured in one run:

- tunnel up: ``ssh -N -L`` started -> the host port answers
- restore: the tunnel's ssh SIGKILLed -> the forwarder noticed, started a new
  one, and the host port answers again (what a user of `portforward` waits)
- request: one HTTP GET through the tunnel, against the same GET served by a
  host process on loopback (the floor: no SSH, no guest)

    python bench/forwarding.py [--runs 10] [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.boot import pct, row  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend  # noqa: E402
from vmfixtures.forwarding import Forwarder  # noqa: E402
from vmfixtures.spec import Endpoint, ForwardSpec, VMSpec  # noqa: E402
from vmfixtures.testkit import HostServer, serve_in_guest, wait_for  # noqa: E402

PORT = 18090


def get(port: int) -> float:
    t = time.perf_counter()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
    return time.perf_counter() - t


def answers(port: int) -> bool:
    try:
        get(port)
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="tunnel starts and kills")
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmfx-fwd-"))
    driver = QemuBackend(storage=tmp / "vms", quiet=True)
    spec = ForwardSpec("bench", "local", Endpoint("127.0.0.1", PORT), Endpoint("127.0.0.1", 8000))
    up, restore, through, floor = [], [], [], []
    host = HostServer(PORT + 1, "hello")
    try:
        driver.create(VMSpec("bench"), owner_pid=os.getpid())
        serve_in_guest(driver.machine("bench"), 8000, "hello")
        for _ in range(args.runs):
            fwd = Forwarder(driver, [spec], say=lambda line: None)
            t = time.perf_counter()
            fwd.start()
            wait_for(lambda: answers(PORT), 30, "the tunnel answering", every=0.005)
            up.append(time.perf_counter() - t)
            fwd.stop()
        fwd = Forwarder(driver, [spec], say=lambda line: None)
        fwd.start()
        watcher = threading.Thread(target=fwd.run, daemon=True)
        watcher.start()
        for _ in range(args.runs):
            pid = fwd.tunnels[0].pid
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: fwd.tunnels[0].pid not in (pid, None) and answers(PORT), 30,
                     "the restored tunnel answering", every=0.005)
            restore.append(time.perf_counter() - t)
        through = [get(PORT) for _ in range(args.requests)]
        floor = [get(PORT + 1) for _ in range(args.requests)]
        fwd.request_stop()
        watcher.join(10)
        fwd.stop()
    finally:
        host.stop()
        for name in driver.names():
            driver.destroy(name)
    print(f"accelerator: {driver.accel().name}; {args.runs} tunnel(s) started and killed, {args.requests} requests")
    print(row("tunnel up (ssh start -> answers)", up, "ms", 1000))
    print(row("restore (SIGKILL -> answers again)", restore, "ms", 1000))
    print(row("GET through the tunnel", through, "ms", 1000))
    print(row("baseline: GET from a host process", floor, "ms", 1000))
    print(f"  restore / tunnel up: x{pct(restore, 50) / pct(up, 50):.2f}; "
          f"tunnel adds {1000 * (pct(through, 50) - pct(floor, 50)):.1f} ms per request (p50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
