"""What spec steps stand on: a project folder, and a way to run a product's commands in it.

``Project`` writes the scenario's config (in the product's format, through its
adapter) and runs a product's command lines in its folder against the run's
storage (``run``, ``spawn``); which command lines, and what their words and
exit codes mean, is the product adapter's business (``vmfixtures.sut``).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .scope import RunScope

if TYPE_CHECKING:
    from .client import Client


@dataclass
class CommandResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"`{_shown(self.argv)}` exited {self.exit_code}\n"
                f"  stdout: {self.stdout.strip()!r}\n  stderr: {self.stderr.strip()!r}")


def _shown(argv: list[str]) -> str:
    """How a command is named in messages: `vmfixtures ARGS` for ours, the program's own name otherwise."""
    if len(argv) > 2 and argv[1:3] == ["-m", "vmfixtures"]:
        return "vmfixtures " + " ".join(a for a in argv[3:] if a != "--quiet")
    if argv and ("/" in argv[0] or argv[0] == "faketime"):
        return " ".join([Path(argv[0]).name, *argv[1:]])
    return "vmfixtures " + " ".join(argv)  # an adapter's results carry only the arguments


class Project:
    """A scenario's project folder with its ``vmfixtures.yaml``."""

    def __init__(self, folder: Path, scope: RunScope, lease: str | None = None):
        self.folder = Path(folder)
        self.scope = scope
        self.lease = lease  # VMs the operator creates belong to this daemon lease
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vms: dict[str, dict] = {}
        self.mounts: list[dict] = []
        self.agents: dict[str, dict] = {}
        self.forwards: list[dict] = []
        self.backgrounds: list[Background] = []
        self.render = None  # the product's config renderer (set by the product adapter)
        self.config_name = "vmfixtures.yaml"

    @property
    def config_path(self) -> Path:
        return self.folder / self.config_name

    def declare_vm(self, name: str, **fields) -> None:
        """Add or change a VM in the config and write the file."""
        self.vms[name] = {k: v for k, v in fields.items() if v not in (None, "")}
        self.save()

    def declare_mount(self, source: str, target: str, vm: str, **fields) -> None:
        self.mounts.append({"source": source, "target": target, "vm": vm, **fields})
        self.save()

    def declare_agent(self, name: str, kind: str, artifact: str, run: str, env: dict | None = None) -> None:
        self.agents[name] = {"install": {kind: artifact}, "run": run, **({"env": env} if env else {})}
        self.save()

    def declare_forward(self, vm: str, kind: str, host, guest=None) -> None:
        self.forwards.append({"vm": vm, "kind": kind, "host": host, **({"guest": guest} if guest else {})})
        self.save()

    def model(self) -> dict:
        """What was declared, in neutral form (a product adapter renders its own config from it)."""
        data: dict = {"vms": self.vms}
        for section in ("mounts", "agents", "forwards"):
            if getattr(self, section):
                data[section] = getattr(self, section)
        return data

    def save(self) -> None:
        """Write the config file from what was declared, in the product's format."""
        if self.render is not None:
            self.write_config(self.render(self.model()))
        else:
            self.write_config(self.model())

    def write_file(self, relative: str, text: str) -> Path:
        """Write a file of the project on the host (parents created)."""
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n")
        return path

    def write_config(self, data: dict | str) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        self.config_path.write_text(text)

    def _env(self) -> dict:
        env = dict(os.environ, VMFIXTURES_STATE_DIR=str(self.scope.dir), VMFIXTURES_OWNER_PID=str(os.getpid()),
                   VMFIXTURES_BACKEND=self.scope.backend)
        if self.lease:
            env["VMFIXTURES_LEASE"] = self.lease
        return env

    def run(self, argv: list[str], timeout: float = 600, input: str | None = None,
            env: dict | None = None) -> CommandResult:
        """Run a product's command line in the project folder against the run's storage
        (``input`` on stdin, ``env`` on top of the run's environment)."""
        proc = subprocess.run(argv, cwd=self.folder, env={**self._env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        return CommandResult(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def spawn(self, argv: list[str]) -> "Background":
        """Start a long-running product command (repeated backups, ...); stopped with the scenario."""
        return self.spawn_with(argv, {})

    def spawn_with(self, argv: list[str], env: dict) -> "Background":
        """``spawn`` with ``env`` on top of the run's environment."""
        proc = subprocess.Popen(argv, cwd=self.folder, env={**self._env(), **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.backgrounds.append(Background(proc, list(argv)))
        return self.backgrounds[-1]

    def stop_backgrounds(self) -> list[str]:
        """SIGTERM every long-running command still running (before its VMs go); returns what had to be killed."""
        from .procs import stop_child

        return [" ".join(bg.argv) for bg in self.backgrounds if stop_child(bg.proc, grace=30)]


class Background:
    """A long-running operator command; waits on its output lines, not on the clock.

    A thread reads stdout line by line into a queue: select() on a buffered pipe
    misses lines that arrived together with the one just read."""

    action: str | None = None  # the operator action it carries out (set by the product adapter)

    def __init__(self, proc: subprocess.Popen, argv: list[str]):
        self.proc, self.argv = proc, argv
        self.lines: list[str] = []
        self._stderr: str | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float = 60, count: int = 1) -> list[str]:
        """Block until ``count`` new stdout lines starting with ``prefix`` arrived."""
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while len(found) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"`{_shown(self.argv)}` printed no line starting with "
                                     f"{prefix!r} within {timeout:.0f}s; so far: {self.lines}") from None
            if line is None:
                self._queue.put(None)  # later waits see the end too
                raise AssertionError(f"`{_shown(self.argv)}` exited {self.proc.wait()}: "
                                     f"{self.stderr().strip()}; output: {self.lines}")
            self.lines.append(line)
            if line.startswith(prefix):
                found.append(line)
        return found

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> CommandResult:
        """Wait for the command to exit and return everything it printed. One still running after
        ``timeout`` is killed and fails the step (an assertion naming it, not a traceback)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"expected `{_shown(self.argv)}` to exit within "
                                 f"{timeout:.0f} s; it was still running (killed)") from None
        self._reader.join(timeout)
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return CommandResult(self.argv, self.proc.returncode, "\n".join(self.lines), self.stderr())

    def stderr(self) -> str:
        """What the command wrote to stderr (read once, after it exited)."""
        if self._stderr is None:
            self.proc.wait()
            self._stderr = self.proc.stderr.read()
        return self._stderr


class Fixtures:
    """How steps get VMs: leased from the daemon (warm pool) or, embedded, booted here."""

    def __init__(self, scope: RunScope, client: "Client | None" = None):
        self.scope = scope
        self.client = client
        self.driver = scope.driver()
        self.driver.quiet = True

    def ensure_running(self, specs: list, lease: str | None) -> list[dict]:
        """Make each spec a running VM in the run's storage (a no-op for one that already runs)."""
        if self.client is None:
            results = self.driver.create_many(specs, owner_pid=os.getpid())
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return [{"name": r.name, "status": r.status, "source": "boot"} for r in results]
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            return list(pool.map(lambda s: self.client.create(self.scope.storage, s.to_dict(), lease,
                                                              self.scope.backend), specs))

    def stop(self, name: str) -> None:
        """Power a VM of the run's storage off (the daemon's ledger learns of it when one runs)."""
        if self.client is None:
            self.driver.stop(name)
        else:
            self.client.vm("stop", self.scope.storage, name=name)

    def boot_from_disk(self, spec, disk: Path, lease: str | None) -> None:
        """A new VM of ``spec`` booted from standalone disk image ``disk`` (moved in), e.g. a product's
        restored backup."""
        if self.client is None:
            self.driver.create_from_disk(spec, Path(disk), owner_pid=os.getpid())
        else:
            self.client.vm("create_from_disk", self.scope.storage, spec=spec.to_dict(), disk=str(disk), lease=lease)


@dataclass
class RunnerProcess:
    """Another test runner holding leased VMs (``Product.hold_lease``)."""

    proc: subprocess.Popen
    lease_id: str
    ssh_port: int  # of the VM it holds

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def spawn_runner(project: Project, name: str, ttl: float, state_dir: Path | None = None,
                 timeout: float = 120) -> RunnerProcess:
    """A separate `vmfixtures` process that leases VM ``name`` of the project config and holds it
    (``state_dir``: storage of its own; default the run's). For tools outside the spec (bench/)."""
    from .sut.reference import Vmfixtures

    return Vmfixtures(project).hold_lease(name, ttl, state_dir, timeout)


def serve_in_guest(machine, port: int, text: str) -> None:
    """An HTTP server inside the guest answering ``text`` on its 127.0.0.1:``port`` (python3 http.server)."""
    site = f"/srv/site-{port}"
    machine.succeed(["mkdir", "-p", site])
    machine.write_file(f"{site}/index.html", text + "\n")
    machine.succeed(f"cd {site} && setsid python3 -m http.server {port} --bind 127.0.0.1 </dev/null >/dev/null 2>&1 &")
    machine.wait_until_succeeds(f"ss -Hltn 'sport = :{port}' | grep -q LISTEN")


class HostServer:
    """An HTTP server on the host's 127.0.0.1:``port`` answering ``text``, in a thread of this process."""

    def __init__(self, port: int, text: str):
        import http.server
        import threading

        body = (text + "\n").encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(url: str, socks5: str | None = None, timeout: float = 10.0) -> str:
    """GET ``url`` from the host with curl, optionally through a SOCKS5 proxy that resolves names remotely."""
    argv = ["curl", "-sS", "--max-time", str(timeout), url]
    if socks5:
        argv[1:1] = ["--socks5-hostname", socks5]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    """Poll ``condition`` until it returns something truthy (host-side facts with no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {what} within {timeout:.0f}s; it did not happen")
        time.sleep(every)
    return value
