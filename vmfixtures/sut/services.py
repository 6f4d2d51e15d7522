"""Test services a guest may try to reach, and the record of who reached them.

The spec never sends a guest's traffic anywhere but here: a network namespace the test creates
(reachable from the host through a veth pair, the way any outside server would be) or the host's
own loopback. Each service answers one banner line and appends the peer of every connection it
accepts to a log: that log, not the guest's or the product's word, says whether the guest got through.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VmfError
from ..procs import CHILDREN, ProcessId, kill

BANNER = "vmfixtures-test-service"

SERVER = r"""
import socket, sys
host, port, log, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
open(ready, "w").close()
while True:
    c, peer = s.accept()
    with open(log, "a") as f:
        f.write(f"{peer[0]}:{peer[1]}\n")
    try:
        c.sendall(b"%s %d\n" % (sys.argv[5].encode(), port))
    finally:
        c.close()
"""


class Service:
    """One TCP service: where it listens, and the peers it has accepted so far."""

    def __init__(self, host: str, port: int, folder: Path, netns: str | None = None):
        self.host, self.port, self.netns = host, port, netns
        self.log = folder / f"service-{port}.log"
        ready = folder / f"service-{port}.ready"
        argv = [sys.executable, "-c", SERVER, host, str(port), str(self.log), str(ready), BANNER]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        CHILDREN[self.proc.pid] = self.proc
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if \
                    self.proc.poll() is not None else ["no answer within 10 s"]
                self.stop()
                raise VmfError(f"test service on {host}:{port} did not start: {' '.join(why)}")
            time.sleep(0.01)
        self.pid = ProcessId.of(self.proc.pid)

    def peers(self) -> list[str]:
        """Every connection the service accepted, as ``address:port`` of the peer."""
        try:
            return self.log.read_text().split()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill(ProcessId.of(self.proc.pid).process())


class ServiceNetwork:
    """A network namespace of this test's own, with a veth pair to the host and services inside."""

    def __init__(self, folder: Path):
        if os.geteuid() != 0:
            raise PermissionError("a test network namespace needs root")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        self.name = f"vmfx-svc-{tag}"
        self.host_if, self.ns_if = f"vmfxh{tag}", f"vmfxn{tag}"
        third = 100 + secrets.randbelow(150)
        self.host_address, self.address = f"10.213.{third}.1", f"10.213.{third}.2"
        self.services: dict[int, Service] = {}
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def serve(self, port: int) -> Service:
        self.services[port] = Service(self.address, port, self.folder, self.name)
        return self.services[port]

    def close(self) -> list[str]:
        """Stop the services and delete the namespace (its end of the veth pair goes with it, and
        the host's end with that); return what could not be removed."""
        for s in self.services.values():
            s.stop()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        left = []
        if self.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
            left.append(f"network namespace {self.name}")
        deadline = time.monotonic() + 5  # the kernel removes the host's end of the pair after the namespace
        while Path(f"/sys/class/net/{self.host_if}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if Path(f"/sys/class/net/{self.host_if}").exists():
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            left.append(f"veth {self.host_if}")
        return left


def loopback_service(port: int, folder: Path) -> Service:
    """A service bound to the host's 127.0.0.1, the kind a developer runs (a database, a dev server)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Service("127.0.0.1", port, Path(folder))


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise VmfError(f"ip {' '.join(args)}: {r.stderr.strip()}")
