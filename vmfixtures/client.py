"""The daemon's client: what steps and the CLI call.

HTTP over the daemon's Unix socket with the standard library's http.client
(no extra dependency on the client side). Daemon errors come back as the
same exception types the library raises, so exit codes do not change.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import errors, paths
from .build import build_id
from .errors import VmfError
from .procs import wait_exit


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class DaemonUnavailable(errors.VmfError):
    """No daemon answers on the socket."""


class Client:
    """Talks to one daemon socket."""

    def __init__(self, socket_path: Path | None = None):
        self.socket_path = Path(socket_path) if socket_path else paths.daemon_socket()

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 600) -> dict | list:
        if self.socket_path.parent.exists():  # whoever can replace the socket could stand in for the daemon
            paths.check_private(self.socket_path.parent, "the daemon's socket")
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(f"no vmfixtures daemon on {self.socket_path} ({exc.strerror}); "
                                    "start one with `vmfixtures daemon start`") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise errors.VmfError(f"daemon on {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            cls = getattr(errors, data.get("type", ""), errors.VmfError) if isinstance(data, dict) else errors.VmfError
            if not (isinstance(cls, type) and issubclass(cls, errors.VmfError)):
                cls = errors.VmfError
            raise cls(data.get("error", f"HTTP {resp.status}") if isinstance(data, dict) else f"HTTP {resp.status}")
        return data

    def alive(self) -> dict | None:
        try:
            return self.request("GET", "/v1/health", timeout=5)
        except errors.PermissionDenied:
            raise  # an unsafe socket folder is not "no daemon": starting one there would be refused too
        except errors.VmfError:
            return None

    # -- leases ------------------------------------------------------------
    def open_lease(self, scope: str = "scenario", scope_key: str | None = None, ttl: float | None = 30,
                   run_id: str | None = None, owner_pid: int | None = None) -> dict:
        return self.request("POST", "/v1/leases", {"owner_pid": owner_pid or os.getpid(), "run_id": run_id,
                                                  "scope": scope, "scope_key": scope_key, "ttl": ttl})

    def lease(self, lease_id: str) -> dict:
        return self.request("GET", f"/v1/leases/{lease_id}")

    def wait_lease_end(self, lease_id: str, timeout: float) -> dict:
        """Block until the daemon has ended the lease (and destroyed its VMs), or ``timeout``."""
        return self.request("GET", f"/v1/leases/{lease_id}?wait_end={timeout}", timeout=timeout + 30)

    def leases(self) -> list:
        return self.request("GET", "/v1/leases")

    def end_lease(self, lease_id: str) -> list[str]:
        return self.request("DELETE", f"/v1/leases/{lease_id}")["destroyed"]

    def heartbeat(self, run_id: str | None = None, owner_pid: int | None = None) -> int:
        return self.request("POST", "/v1/heartbeat", {"run_id": run_id, "owner_pid": owner_pid})["renewed"]

    # -- VMs -----------------------------------------------------------------
    def vms(self) -> list:
        return self.request("GET", "/v1/vms")

    def vm(self, action: str, storage: Path, **fields) -> dict:
        return self.request("POST", f"/v1/vms/{action}", {"storage": str(storage), **fields})

    def create(self, storage: Path, spec: dict, lease: str | None = None, backend: str | None = None) -> dict:
        return self.vm("create", storage, spec=spec, lease=lease, backend=backend)

    def disk(self, action: str, storage: Path, **fields) -> dict | list:
        """A data disk action (create, attach, detach, remove, list) in ``storage``."""
        return self.request("POST", f"/v1/disks/{action}", {"storage": str(storage), **fields})

    def gc(self) -> list[str]:
        return self.request("POST", "/v1/gc")["reclaimed"]

    def observe(self, fix: bool = False) -> dict:
        """Run an observer pass now."""
        return self.request("POST", "/v1/observe", {"fix": fix})

    def observer_reports(self, after: int = 0, wait: float = 0.0) -> list[dict]:
        """Observer passes numbered above ``after``; ``wait`` blocks until the next one."""
        return self.request("GET", f"/v1/observer?after={after}&wait={wait}", timeout=wait + 60)

    def tunnel_up(self, storage: Path, name: str, kind: str, bind: str, target: str, pid: int,
                  create_time: float, tunnel_id: int | None = None) -> int:
        """Record a listening tunnel in the ledger; returns its id (the same one after a restore)."""
        return self.request("POST", "/v1/tunnels", {"storage": str(storage), "name": name, "kind": kind,
                                                    "bind": bind, "target": target, "pid": pid,
                                                    "create_time": create_time, "id": tunnel_id})["id"]

    def tunnel_down(self, tunnel_id: int) -> None:
        self.request("DELETE", f"/v1/tunnels/{tunnel_id}")

    def tunnels(self) -> list[dict]:
        return self.request("GET", "/v1/tunnels")

    def shutdown(self) -> None:
        self.request("POST", "/v1/shutdown")

    def stop(self, timeout: float = 60.0) -> tuple[int | None, bool]:
        """Ask the running daemon to stop and wait for its process to exit: (its pid, or None when none
        answered; whether it exited within ``timeout``)."""
        health = self.alive()
        if not health:
            return None, True
        self.shutdown()
        return health["pid"], wait_exit(health["pid"], timeout)


class Heartbeat:
    """Renews a run's leases every ``interval`` seconds from a daemon thread."""

    def __init__(self, client: Client, run_id: str, interval: float):
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vmfixtures-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.client.heartbeat(run_id=self.run_id)
            except errors.VmfError:
                pass  # the daemon may be restarting; the next beat retries, the TTL absorbs the gap

    def stop(self) -> None:
        self._stop.set()


def start_daemon(socket_path: Path | None = None, extra_args: list[str] | None = None,
                 timeout: float = 120) -> dict:
    """Start a background daemon and block until it listens (it writes to a pipe when ready)."""
    socket_path = Path(socket_path) if socket_path else paths.daemon_socket()
    home = paths.private_dir(paths.daemon_home(), "the daemon's ledger and pool")
    paths.private_dir(socket_path.parent, "the daemon's socket")  # refused here, in one line, not in the log
    read_fd, write_fd = os.pipe()
    log = open(home / "daemon.log", "ab")
    env = dict(os.environ, VMFIXTURES_DAEMON_SOCKET=str(socket_path))
    proc = subprocess.Popen([sys.executable, "-m", "vmfixtures", "daemon", "run", "--ready-fd", str(write_fd),
                             *(extra_args or [])], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            pass_fds=[write_fd], start_new_session=True, env=env)
    os.close(write_fd)
    log.close()
    with os.fdopen(read_fd, "rb") as ready:
        import select

        if not select.select([ready], [], [], timeout)[0]:
            proc.kill()
            raise errors.Timeout(f"the daemon did not get ready within {timeout:.0f}s (log: {home / 'daemon.log'})")
        line = ready.readline()
    if not line:
        proc.wait(10)
        tail = (home / "daemon.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise errors.VmfError(f"the daemon exited during start-up (exit {proc.returncode}):\n  " + "\n  ".join(tail))
    return json.loads(line)


def ensure_daemon(socket_path: Path | None = None, extra_args: list[str] | None = None) -> tuple[Client, dict | None]:
    """A client of the running daemon, starting one (with ``extra_args``) if none answers.
    Returns (client, start info or None)."""
    client = Client(socket_path)
    health = client.alive()
    if health and health.get("build") != build_id():
        if health["leases"]:
            raise VmfError(f"the daemon on {client.socket_path} (pid {health['pid']}) runs another build of "
                           f"vmfixtures ({health.get('build', 'older')}; this is {build_id()}) and holds "
                           f"{health['leases']} lease(s) of other runs; stop it (`vmfixtures daemon stop`) when they end")
        pid, gone = client.stop(60.0)  # idle, and would serve this run with other code: replace it
        if not gone:
            raise VmfError(f"the daemon of another build (pid {pid}) did not stop within 60 s")
        health = None
    if health:
        return client, None
    try:
        info = start_daemon(client.socket_path, extra_args)
    except errors.VmfError:
        if client.alive():  # another process started one in the meantime: use that one
            return client, None
        raise
    return client, info
