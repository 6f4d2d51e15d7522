"""Supervised SSH tunnels into VMs: local, remote and SOCKS5 forwards.

Each forward is one OpenSSH client (``ssh -N``) talking to the guest's sshd
through the VM's forwarded SSH port, with the installation's key and the
guest's host key pinned. One process per tunnel means one tunnel can die
(or be killed) without taking the others with it; the ``Forwarder`` notices
at once (it waits on the processes' pidfds, not on a clock), says so, and
starts a new one. Its children die with it, even when it is SIGKILLed
(PR_SET_PDEATHSIG), so a crashed forwarder leaves no listener behind.

A tunnel is *up* when it really carries traffic: a local or SOCKS5 forward
when its host port accepts a connection, a remote forward when the guest
lists its port as listening.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from . import keys
from .backends.qemu import QemuBackend
from .network import listens
from .procs import die_with_parent, process_alive, stop_child
from .errors import GuestError, Timeout, VmfError
from .spec import ForwardSpec

GIVE_UP_AFTER = 5  # ssh failing on its own this often in a row, each within QUICK_DEATH s: give up
QUICK_DEATH = 2.0


class TunnelError(VmfError):
    """A tunnel could not be brought up (port in use, VM gone, ssh refused)."""

    exit_code = 9


@dataclass
class Tunnel:
    """One forward and the ssh process that currently carries it."""

    spec: ForwardSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    ledger_id: int | None = None
    pidfd: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def ssh_argv(driver: QemuBackend, spec: ForwardSpec) -> list[str]:
    """The OpenSSH command line that carries ``spec`` (no user config, no shared connection)."""
    m = driver.machine(spec.vm)
    flag = {"local": ["-L", f"{spec.host}:{spec.guest}"],
            "remote": ["-R", f"{spec.guest}:{spec.host}"],
            "socks5": ["-D", str(spec.host)]}[spec.kind]
    return ["ssh", "-N", "-F", "/dev/null", "-i", str(keys.ensure_keypair()), "-p", str(m.ssh_port),
            "-o", f"UserKnownHostsFile={driver.known_hosts(spec.vm)}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=2",
            "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR", *flag, "root@127.0.0.1"]


def port_free(addr: str, port: int) -> bool:
    """True when nothing listens on ``addr:port`` on the host (so a tunnel may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
            return True
        except OSError:
            return False


def host_listener(port: int) -> str:
    """Who listens on a host TCP port, for an error message."""
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return f"pid {c.pid} ({psutil.Process(c.pid).name()})"
    except psutil.Error:
        pass
    return "another process"


class Forwarder:
    """Keeps the forwards of a config up until ``stop``.

    ``say`` receives one line per event (up, died, restored, given up, stopped);
    ``on_up``/``on_down`` let a caller record tunnels (the daemon's ledger)."""

    def __init__(self, driver: QemuBackend, specs: list[ForwardSpec], say: Callable[[str], None] = print,
                 on_up: Callable[[Tunnel], None] | None = None, on_down: Callable[[Tunnel], None] | None = None):
        self.driver = driver
        self.tunnels = [Tunnel(s) for s in specs]
        self.say = say
        self.on_up = on_up or (lambda t: None)
        self.on_down = on_down or (lambda t: None)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()

    # -- bringing tunnels up --------------------------------------------------
    def start(self) -> None:
        """Bring every tunnel up, or none: on the first failure the ones already up are stopped."""
        for t in self.tunnels:
            if self.driver.state(t.spec.vm).value != "running":
                raise TunnelError(f"forward {t.spec.describe()}: VM '{t.spec.vm}' is not running")
            if t.spec.kind != "remote" and not port_free(t.spec.host.addr, t.spec.host.port):
                raise TunnelError(f"forward {t.spec.describe()}: host port {t.spec.host} is already in use "
                                  f"by {host_listener(t.spec.host.port)}")
        try:
            for t in self.tunnels:
                self._launch(t)
                self.say(f"up: {t.spec.describe()} (ssh pid {t.pid})")
        except BaseException:
            self.stop()
            raise

    def _launch(self, t: Tunnel) -> None:
        argv = ssh_argv(self.driver, t.spec)
        # Launched from the thread that runs the forwarder for its whole life: PDEATHSIG
        # fires when the forking thread ends, and that must be when the forwarder ends.
        t.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True, preexec_fn=die_with_parent)
        t.started_at = time.monotonic()
        t.pidfd = os.pidfd_open(t.proc.pid)
        try:
            self._wait_up(t)
        except BaseException:
            self._end(t)
            raise
        self.on_up(t)

    def _wait_up(self, t: Tunnel) -> None:
        deadline = time.monotonic() + self.driver.accel().scale(20)
        m = self.driver.machine(t.spec.vm) if t.spec.kind == "remote" else None
        while True:
            try:
                t.proc.wait(timeout=0.05)  # an exit is the event that ends the wait early
            except subprocess.TimeoutExpired:
                pass
            else:
                raise TunnelError(f"forward {t.spec.describe()}: ssh exited {t.proc.returncode}: "
                                  f"{t.proc.stderr.read().strip() or 'no message'}")
            if self._is_up(t, m):
                return
            if time.monotonic() > deadline:
                raise Timeout(f"forward {t.spec.describe()}: not listening after {self.driver.accel().scale(20):.0f}s")

    def _is_up(self, t: Tunnel, m) -> bool:
        if m is not None:  # listening in the guest, and by sshd: another listener on the port is not the tunnel
            out = m.execute(["ss", "-Hltnp", f"sport = :{t.spec.guest.port}"]).stdout
            return '"sshd"' in out
        if not listens(t.proc.pid, t.spec.host.port, ipv6=True):
            return False  # someone else's listener on the port (taken since it was checked) is not the tunnel
        addr = "127.0.0.1" if t.spec.host.addr in ("0.0.0.0", "") else t.spec.host.addr
        try:
            socket.create_connection((addr, t.spec.host.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    # -- supervision ------------------------------------------------------------
    def run(self) -> int:
        """Restore tunnels that die until ``stop`` is called; returns how many were given up."""
        given_up = 0
        while not self._stopping.is_set() and any(t.proc for t in self.tunnels):
            fds = {t.pidfd: t for t in self.tunnels if t.proc}
            ready = select.select([self._wake_r, *fds], [], [])[0]
            for fd in ready:
                if fd == self._wake_r or self._stopping.is_set():
                    continue
                t = fds[fd]
                pid, code = t.proc.pid, t.proc.wait()
                why = t.proc.stderr.read().strip()
                self._end(t)
                self.say(f"died: {t.spec.describe()} (ssh pid {pid} exited {code}{': ' + why if why else ''})")
                if not self._restore(t, killed=code < 0):
                    given_up += 1
        return given_up

    def _restore(self, t: Tunnel, killed: bool) -> bool:
        # Only an ssh that failed on its own counts against the tunnel; one killed by a signal says nothing.
        early = time.monotonic() - t.started_at < QUICK_DEATH
        t.quick_deaths = t.quick_deaths + 1 if early and not killed else 0
        if self.driver.state(t.spec.vm).value != "running":
            self.say(f"given up: {t.spec.describe()} (VM '{t.spec.vm}' is no longer running)")
            return False
        if t.quick_deaths >= GIVE_UP_AFTER:
            self.say(f"given up: {t.spec.describe()} (died {GIVE_UP_AFTER} times right after starting)")
            return False
        try:
            self._launch(t)
        except (VmfError, GuestError) as exc:
            self.say(f"given up: {t.spec.describe()} ({exc})")
            return False
        t.restarts += 1
        self.say(f"restored: {t.spec.describe()} (ssh pid {t.pid}, restart {t.restarts})")
        return True

    # -- stopping ---------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler)."""
        self._stopping.set()
        os.write(self._wake_w, b"x")

    def stop(self) -> list[int]:
        """End every tunnel; returns the ssh pids, each proven gone."""
        self._stopping.set()
        pids = [t.pid for t in self.tunnels if t.proc]
        for t in self.tunnels:
            self._end(t)
        alive = [p for p in pids if process_alive(p)]
        if alive:
            raise TunnelError(f"ssh processes survived the forwarder's stop: {alive}")
        return pids

    def _end(self, t: Tunnel) -> None:
        """Terminate (then kill) the tunnel's ssh, reap it, and forget it. Idempotent."""
        if t.proc is None:
            return
        stop_child(t.proc, grace=5)
        if t.pidfd is not None:
            os.close(t.pidfd)
            t.pidfd = None
        self.on_down(t)
        t.proc = None
