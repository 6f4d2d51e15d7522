"""HTTP/JSON on a Unix socket (aiohttp), so `curl --unix-socket` works for debugging.

Errors come back as ``{"error": message, "type": VmfError subclass}`` with a
4xx status for bad requests and unknown objects; the daemon keeps running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

from ..build import build_id
from .. import errors, paths
from .service import FixtureService

log = logging.getLogger("vmfixtures.daemon")

STATUS = {errors.ConfigError: 400, errors.NotFound: 404, errors.Mismatch: 409, errors.InUse: 409, errors.PermissionDenied: 403,
          errors.MissingDependency: 503, errors.Timeout: 504, errors.GuestError: 502}


def _error(exc: Exception) -> web.Response:
    if isinstance(exc, errors.VmfError):
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        return web.json_response({"error": str(exc), "type": type(exc).__name__}, status=status)
    log.exception("internal error")
    return web.json_response({"error": f"internal error: {exc!r}", "type": "VmfError"}, status=500)


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.ConfigError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.ConfigError("request body must be a JSON object")
    return body


def _field(body: dict, name: str, kind, required: bool = True):
    value = body.get(name)
    if value is None:
        if required:
            raise errors.ConfigError(f"missing field '{name}'")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise errors.ConfigError(f"field '{name}' must be {getattr(kind, '__name__', kind)}")
    return value


class Daemon:
    """The running daemon: service + HTTP app + periodic tasks."""

    def __init__(self, service: FixtureService, socket_path: Path, reap_interval: float = 1.0,
                 observe_interval: float = 5.0):
        self.service = service
        self.socket_path = Path(socket_path)
        self.reap_interval = reap_interval
        self.observe_interval = observe_interval
        self.stopping = asyncio.Event()
        self.last_reap: list[str] = []

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/v1/health", self.health)
        r.add_post("/v1/leases", self.open_lease)
        r.add_get("/v1/leases", self.list_leases)
        r.add_get("/v1/leases/{id}", self.get_lease)
        r.add_delete("/v1/leases/{id}", self.end_lease)
        r.add_post("/v1/heartbeat", self.heartbeat)
        r.add_get("/v1/vms", self.list_vms)
        r.add_post("/v1/vms/{action}", self.vm_action)
        r.add_post("/v1/gc", self.gc)
        r.add_get("/v1/events", self.events)
        r.add_post("/v1/shutdown", self.shutdown)
        r.add_get("/v1/observer", self.observer_reports)
        r.add_post("/v1/observe", self.observe)
        r.add_get("/v1/tunnels", self.list_tunnels)
        r.add_post("/v1/tunnels", self.tunnel_up)
        r.add_delete("/v1/tunnels/{id:[0-9]+}", self.tunnel_down)
        r.add_post("/v1/disks/{action}", self.disk_action)
        return app

    @web.middleware
    async def _errors(self, request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:  # every failure becomes a JSON error; the daemon lives on
            return _error(exc)

    async def health(self, request):
        s = self.service
        return web.json_response({"pid": os.getpid(), "socket": str(self.socket_path), "home": str(s.home),
                                  "uptime": round(time.time() - s.started_at, 1),
                                  "leases": len(s.ledger.active_leases()),
                                  "idle": len(s.ledger.live_vms(state="pooled")), "build": build_id()})

    async def open_lease(self, request):
        b = await _body(request)
        lease = await self._run(self.service.open_lease, _field(b, "owner_pid", int, False),
                                _field(b, "run_id", str, False), _field(b, "scope", str, False) or "scenario",
                                _field(b, "scope_key", str, False), _field(b, "ttl", (int, float), False))
        return web.json_response(lease, status=201)

    async def list_leases(self, request):
        s = self.service
        return web.json_response([s.describe_lease(l["id"]) for l in s.ledger.active_leases()])

    async def get_lease(self, request):
        lease_id = request.match_info["id"]
        wait = request.query.get("wait_end")
        if wait is not None:  # long poll: answer when the lease ends (or after `wait_end` seconds)
            try:
                seconds = min(float(wait), 600.0)
            except ValueError:
                raise errors.ConfigError(f"wait_end: {wait!r} is not a number of seconds") from None
            return web.json_response(await self._run(self.service.wait_lease_end, lease_id, seconds))
        return web.json_response(await self._run(self.service.describe_lease, lease_id))

    async def end_lease(self, request):
        gone = await self._run(self.service.end_lease, request.match_info["id"], "released")
        self._refill_soon()
        return web.json_response({"destroyed": gone})

    async def heartbeat(self, request):
        b = await _body(request)
        n = self.service.heartbeat(_field(b, "run_id", str, False), _field(b, "owner_pid", int, False))
        return web.json_response({"renewed": n})

    async def list_vms(self, request):
        return web.json_response(await self._run(self.service.list_vms))

    async def vm_action(self, request):
        action = request.match_info["action"]
        b = await _body(request)
        s = self.service
        storage = _field(b, "storage", str)
        if action == "create":
            result = await self._run(s.create, storage, _field(b, "spec", dict), _field(b, "lease", str, False),
                                     _field(b, "backend", str, False))
            resp = web.json_response(result, status=201 if result["status"] == "created" else 200)
            # Sent before the refill starts: its restore (processes spawned, Python holding the lock the
            # event loop needs to write) delayed the answer by 2-4 ms of a 10 ms hand-off.
            await resp.prepare(request)
            await resp.write_eof()
            self._refill_soon()
            return resp
        if action == "create_from_disk":
            return web.json_response(await self._run(s.create_from_disk, storage, _field(b, "spec", dict),
                                                     _field(b, "disk", str), _field(b, "lease", str, False)), status=201)
        name = _field(b, "name", str)
        if action == "stop":
            return web.json_response(await self._run(s.stop, storage, name, _field(b, "timeout", (int, float), False)))
        if action == "start":
            return web.json_response(await self._run(s.start, storage, name))
        if action == "restart":
            await self._run(s.stop, storage, name, None)
            return web.json_response(await self._run(s.start, storage, name))
        if action == "destroy":
            return web.json_response(await self._run(s.destroy, storage, name))
        raise errors.NotFound(f"unknown VM action '{action}' (create, start, stop, restart, destroy)")

    async def disk_action(self, request):
        action = request.match_info["action"]
        b = await _body(request)
        s = self.service
        storage = _field(b, "storage", str)
        if action == "list":
            return web.json_response(await self._run(s.disk_list, storage))
        name = _field(b, "name", str)
        if action == "create":
            result = await self._run(s.disk_create, storage, name, _field(b, "size", (str, int)),
                                     _field(b, "lease", str, False))
            return web.json_response(result, status=201)
        if action == "attach":
            return web.json_response(await self._run(s.disk_attach, storage, name, _field(b, "vm", str)))
        if action == "detach":
            return web.json_response(await self._run(s.disk_detach, storage, name))
        if action == "remove":
            return web.json_response(await self._run(s.disk_remove, storage, name))
        raise errors.NotFound(f"unknown disk action '{action}' (create, attach, detach, remove, list)")

    async def gc(self, request):
        reaped = await self._run(self.service.reap)
        return web.json_response({"reclaimed": reaped})

    async def events(self, request):
        return web.json_response(self.service.ledger.events(int(request.query.get("limit", 100))))

    async def observer_reports(self, request):
        try:
            after = int(request.query.get("after", 0))
            wait = min(float(request.query.get("wait", 0)), 600.0)
        except ValueError:
            raise errors.ConfigError("after must be a pass number and wait a number of seconds") from None
        return web.json_response(await self._run(self.service.observer_reports, after, wait))

    async def list_tunnels(self, request):
        return web.json_response(self.service.ledger.live_tunnels())

    async def tunnel_up(self, request):
        b = await _body(request)
        result = await self._run(self.service.tunnel_up, _field(b, "storage", str), _field(b, "name", str),
                                 _field(b, "kind", str), _field(b, "bind", str), _field(b, "target", str),
                                 _field(b, "pid", int), _field(b, "create_time", (int, float)),
                                 _field(b, "id", int, False))
        return web.json_response(result, status=201)

    async def tunnel_down(self, request):
        return web.json_response(await self._run(self.service.tunnel_down, int(request.match_info["id"])))

    async def observe(self, request):
        b = await _body(request)
        return web.json_response(await self._run(self.service.observe, bool(_field(b, "fix", bool, False))))

    async def _observer(self):
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.observe_interval)
            except asyncio.TimeoutError:
                pass
            if self.stopping.is_set():
                break
            try:
                report = await self._run(self.service.observe, False)
                for f in report["findings"]:
                    log.warning("observer: %s %s (%s)", f["type"], f["object"], f["evidence"])
            except Exception:
                log.exception("observer pass failed")

    async def shutdown(self, request):
        self.stopping.set()
        return web.json_response({"stopping": True})

    def _refill_soon(self) -> None:
        asyncio.get_running_loop().run_in_executor(None, self._refill)

    def _refill(self) -> None:
        try:
            self.service.pool.refill()
        except Exception:  # a failed refill only costs speed: leases restore on demand
            log.exception("pool refill failed")

    async def _reaper(self):
        # A thread of its own: with every pool thread in a slow restore or boot (parallel runs on
        # libvirt), a dead runner's lease waited more than its 5 s TTL for a turn.
        own = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reaper")
        try:
            await self._reap_until_stopped(own)
        finally:
            own.shutdown(wait=False)

    async def _reap_until_stopped(self, executor):
        while not self.stopping.is_set():
            try:
                reaped = await asyncio.get_running_loop().run_in_executor(executor, self.service.reap)
                for line in reaped:
                    log.info("reaped %s", line)
                if reaped:
                    self._refill_soon()
            except Exception:
                log.exception("reaper pass failed")
            try:
                await asyncio.wait_for(self.stopping.wait(), self.reap_interval)
            except asyncio.TimeoutError:
                pass

    async def serve(self, ready_fd: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(8))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        reclaimed = await self._run(self.service.reconcile)
        for line in reclaimed:
            log.info("reclaimed at start-up: %s", line)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        sock = _bind_private(self.socket_path)
        site = web.SockSite(runner, sock)
        await site.start()
        log.info("listening on %s (pid %d); reclaimed %d leftover(s)", self.socket_path, os.getpid(), len(reclaimed))
        if ready_fd is not None:
            os.write(ready_fd, json.dumps({"pid": os.getpid(), "reclaimed": reclaimed}).encode() + b"\n")
            os.close(ready_fd)
        reaper = asyncio.create_task(self._reaper())
        observer = asyncio.create_task(self._observer()) if self.observe_interval > 0 else None
        self._refill_soon()  # idle VMs for the specs of known snapshots
        await self.stopping.wait()
        log.info("stopping: draining the idle pool")
        reaper.cancel()
        if observer:
            observer.cancel()
        await runner.cleanup()
        await self._run(self.service.shutdown)
        self.socket_path.unlink(missing_ok=True)


def _bind_private(path: Path) -> socket.socket:
    """A listening socket only its user can open: 0700 folder (refused when another user owns it or can
    enter it), 0600 socket, bound under umask 077."""
    paths.private_dir(path.parent, "the daemon's socket")
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def acquire_lock(home: Path, socket_path: Path):
    """One daemon per home: an exclusive lock, held for the daemon's lifetime."""
    paths.private_dir(home, "the daemon's ledger and pool")
    f = open(home / "daemon.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise errors.VmfError(f"a vmfixtures daemon already runs (pid {pid}) for {home} on {socket_path}")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def run_foreground(home: Path, socket_path: Path, idle_per_spec: int, max_idle: int, reap_interval: float,
                   ready_fd: int | None = None, observe_interval: float = 5.0) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: thread stacks to the log
    paths.private_dir(Path(socket_path).parent, "the daemon's socket")  # before anything starts
    lock = acquire_lock(home, socket_path)
    try:
        service = FixtureService(home, idle_per_spec, max_idle)
        asyncio.run(Daemon(service, socket_path, reap_interval, observe_interval).serve(ready_fd))
    finally:
        lock.close()
    return 0
