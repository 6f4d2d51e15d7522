"""What the daemon does, independent of HTTP: leases, placement, reaping, reconciling.

Blocking work (QEMU, qemu-img, the guest agent) runs here, in the server's
worker threads; the ledger records each step before it happens.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from .. import backends, paths
from ..backends import Backend, open_backend
from ..backends.qemu import kill_helpers_without_folder, orphan_qemus, orphan_run_dirs, stop_run_dir_helpers
from ..capabilities import require_arch
from ..procs import live_process
from ..errors import ConfigError, NotFound, VmfError
from ..spec import check_name, parse_vm
from ..observer import Observer
from .ledger import Ledger
from .pool import Pool

log = logging.getLogger("vmfixtures.daemon")

SCOPES = ("scenario", "feature", "tag", "run", "persistent")


class FixtureService:
    """The daemon's state: ledger, pool, and the leases they serve."""

    def __init__(self, home: Path, idle_per_spec: int = 1, max_idle: int = 2, quiet: bool = True):
        self.home = Path(home)
        paths.private_dir(self.home, "the daemon's ledger and pool")
        self.ledger = Ledger(self.home / "ledger.sqlite")
        self.pool = Pool(self.home, self.ledger, idle_per_spec, max_idle, quiet)
        self.quiet = quiet
        self._vm_lock = threading.RLock()  # placement and destruction of one (storage, name) at a time
        self.started_at = time.time()
        self.observer = Observer(self.ledger, self.home)
        self.reports: deque[dict] = deque(maxlen=500)
        self.new_report = threading.Condition()

    def observe(self, fix: bool = False) -> dict:
        """One observer pass; kept in the history that `/v1/observer` serves."""
        report = self.observer.run(fix=fix).to_dict()
        with self.new_report:
            self.reports.append(report)
            self.new_report.notify_all()
        return report

    def observer_reports(self, after: int = 0, wait: float = 0.0) -> list[dict]:
        """Reports numbered above ``after``; with ``wait``, block until there is one (or the time is up)."""
        deadline = time.monotonic() + wait
        with self.new_report:
            while True:
                found = [r for r in self.reports if r["number"] > after]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self.new_report.wait(remaining)

    # -- leases ----------------------------------------------------------
    def open_lease(self, owner_pid: int | None, run_id: str | None, scope: str, scope_key: str | None,
                   ttl: float | None) -> dict:
        if scope not in SCOPES:
            raise ConfigError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
        owner_start = None
        if owner_pid is not None:
            try:
                owner_start = psutil.Process(owner_pid).create_time()
            except psutil.Error:
                raise NotFound(f"owner pid {owner_pid} is not running") from None
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"ttl: {ttl} must be positive")
        lease_id = self.ledger.add_lease(owner_pid, owner_start, run_id, scope, scope_key, ttl)
        self.ledger.event("lease-open", lease_id, {"owner": owner_pid, "scope": scope, "key": scope_key})
        return self.describe_lease(lease_id)

    def describe_lease(self, lease_id: str) -> dict:
        lease = self.ledger.lease(lease_id)
        if not lease:
            raise NotFound(f"no lease '{lease_id}'")
        lease["vms"] = [self.describe_vm(v) for v in self.ledger.live_vms(lease_id=lease_id)]
        return lease

    @staticmethod
    def backend_of(row: dict) -> Backend:
        """The backend a ledger row's VM runs on."""
        return open_backend(row.get("backend") or "qemu", Path(row["storage"]), quiet=True)

    def describe_vm(self, row: dict) -> dict:
        driver = self.backend_of(row)
        info = driver.run_info(row["name"]) or {}
        state = driver.state(row["name"]).value
        return {"id": row["id"], "storage": row["storage"], "name": row["name"], "lease": row["lease_id"],
                "ledger_state": row["state"], "state": state, "source": row["source"],
                "spec": json.loads(row["spec"]), "pid": info.get("pid") if state == "running" else None,
                "ssh_port": info.get("ssh_port") if state == "running" else None, "accel": info.get("accel"),
                "backend": driver.name}

    def wait_lease_end(self, lease_id: str, timeout: float) -> dict:
        """Block until the lease has ended (or ``timeout``); returns the lease."""
        deadline = time.monotonic() + timeout
        with self.ledger.lease_ended:
            while True:
                lease = self.ledger.lease(lease_id)
                if not lease:
                    raise NotFound(f"no lease '{lease_id}'")
                remaining = deadline - time.monotonic()
                if lease["state"] == "ended" or remaining <= 0:
                    return lease
                self.ledger.lease_ended.wait(remaining)

    def heartbeat(self, run_id: str | None, owner_pid: int | None) -> int:
        return self.ledger.renew(run_id, owner_pid)

    def end_lease(self, lease_id: str, reason: str = "released") -> list[str]:
        """End a lease and destroy its VMs; returns their names."""
        lease = self.ledger.lease(lease_id)
        if not lease:
            raise NotFound(f"no lease '{lease_id}'")
        gone = []
        for row in self.ledger.live_vms(lease_id=lease_id):
            self._destroy_row(row)
            gone.append(row["name"])
        gone_disks = self._remove_lease_disks(lease_id)
        self.ledger.end_lease(lease_id, reason)
        self.ledger.event("lease-end", lease_id, {"reason": reason, "destroyed": gone, "disks": gone_disks})
        return gone

    # -- data disks (vmfixtures.disks does the work; the ledger holds a row per disk) -----------
    def _disks(self, storage: str):
        from ..disks import Disks

        if not Path(storage).is_absolute():
            raise ConfigError(f"storage: {storage!r} must be an absolute path")
        return Disks(Path(storage))

    def disk_create(self, storage: str, name: str, size, lease_id: str | None) -> dict:
        self._lease_for(lease_id)
        info = self._disks(storage).create(name, size)
        self.ledger.add_data_disk(str(info.file), name, info.size, lease_id)
        self.ledger.event("disk-create", str(info.file), {"size": info.size, "lease": lease_id})
        return info.to_dict()

    def disk_attach(self, storage: str, name: str, vm: str) -> dict:
        disks = self._disks(storage)
        path = str(disks.path(name))
        if disks.path(name).is_file() and self.ledger.data_disk(path) is None:  # made while no daemon ran
            self.ledger.add_data_disk(path, name, disks.info(name).size, None)
        row = self.ledger.find_vm(storage, vm)
        before = self.ledger.data_disk(path)
        if row and before:
            self.ledger.disk_attached(path, row["id"])  # recorded before it is acted on
        try:
            disk, how = disks.attach(name, vm)
        except BaseException:
            if before:
                self.ledger.disk_attached(path, before["vm_id"])
            raise
        self.ledger.event("disk-attach", path, {"vm": vm, "how": how, "slot": disk.slot})
        return {"name": name, "vm": vm, "how": how, "slot": disk.slot}

    def disk_detach(self, storage: str, name: str) -> dict:
        disks = self._disks(storage)
        vm, hot = disks.detach(name)
        self.ledger.disk_attached(str(disks.path(name)), None)
        if vm:
            self.ledger.event("disk-detach", str(disks.path(name)), {"vm": vm, "hot": hot})
        return {"name": name, "vm": vm, "hot": hot}

    def disk_remove(self, storage: str, name: str) -> dict:
        path = self._disks(storage).remove(name)
        self.ledger.remove_disk_path(str(path))
        self.ledger.event("disk-remove", str(path))
        return {"name": name, "file": str(path)}

    def disk_list(self, storage: str) -> list[dict]:
        return [d.to_dict() for d in self._disks(storage).list()]

    def _remove_lease_disks(self, lease_id: str) -> list[str]:
        """Data disks made under an ending lease go with it (after its VMs, which detached them)."""
        from ..disks import Disks

        gone = []
        for row in self.ledger.data_disks(lease_id=lease_id):
            disks = Disks(Path(row["path"]).parent.parent)
            try:
                disks.detach(row["name"])  # attached to a VM of another lease meanwhile
                disks.remove(row["name"])
            except NotFound:
                pass  # removed behind our back; the row goes all the same
            except VmfError as exc:
                self.ledger.event("disk-remove-failed", row["path"], str(exc))
                continue
            self.ledger.remove_disk_path(row["path"])
            gone.append(row["name"])
        return gone

    def reap(self) -> list[str]:
        """End leases whose owner died or whose TTL lapsed."""
        reaped = []
        now = time.time()
        for lease in self.ledger.active_leases():
            reason = None
            if lease["owner_pid"] is not None and live_process(lease["owner_pid"], lease["owner_start"]) is None:
                reason = f"owner pid {lease['owner_pid']} died"
            elif lease["expires_at"] is not None and lease["expires_at"] < now:
                reason = f"TTL of {lease['ttl']:.0f}s lapsed without a heartbeat"
            if reason:
                gone = self.end_lease(lease["id"], reason)
                reaped.append(f"lease {lease['id']} ({reason}): destroyed {', '.join(gone) or 'no VM'}")
        return reaped

    # -- VMs ---------------------------------------------------------------
    def _lease_for(self, lease_id: str | None) -> dict | None:
        if lease_id is None:
            return None
        lease = self.ledger.lease(lease_id)
        if not lease or lease["state"] != "active":
            raise NotFound(f"no active lease '{lease_id}'")
        return lease

    def create(self, storage: str, spec_body: dict, lease_id: str | None, backend: str | None = None) -> dict:
        """Create VM ``spec.name`` in ``storage`` on ``backend`` (pool hand-off, else restore, else boot):
        the CLI's `vm create`."""
        if not isinstance(spec_body, dict) or "name" not in spec_body:
            raise ConfigError("spec: expected a mapping with a 'name'")
        body = dict(spec_body)
        name = check_name(body.pop("name"), "spec.name")
        spec = parse_vm(name, body, "spec")
        require_arch(spec)  # before the pool: its snapshots are of the host's own architecture
        lease = self._lease_for(lease_id)
        owner = lease["owner_pid"] if lease else None
        storage_path = Path(storage)
        if not storage_path.is_absolute():
            raise ConfigError(f"storage: {storage!r} must be an absolute path")
        kind = backends.chosen(backend, "backend")
        driver = backends.backend_for(storage_path, name, kind)
        began = time.monotonic()
        with self._vm_lock:
            if backends.recorded_backend(storage_path / name):
                result = driver.create(spec, start=False)  # "exists", or Mismatch naming each field
                return {"status": "exists", "source": None, "state": result.state.value, "name": name}
            placed = self.pool.take(spec, storage_path, lease_id, owner, kind)
        if placed is None:
            placed = self._place(driver, spec, lease_id, owner)
        seconds = time.monotonic() - began
        self.ledger.event("vm-create", f"{storage}/{name}", {"source": placed.source, "lease": lease_id,
                                                             "seconds": round(seconds, 4)})
        log.info("vm %s: from %s in %.4fs (lease %s)", name, placed.source, seconds, lease_id)  # bench/p0.py reads it
        return {"status": "created", "source": placed.source, "state": "running", "name": name}

    def _place(self, driver: Backend, spec, lease_id: str | None, owner: int | None):
        """Restore from the pool's snapshot, or boot where the backend has no memory snapshots."""
        if driver.supports(backends.base.MEMORY_SNAPSHOTS):
            return self.pool.restore(driver, spec, lease_id, owner, "leased")
        from .pool import Placed

        vm_id = self.ledger.add_vm(str(driver.storage), spec.name, spec.to_dict(), "creating", lease_id=lease_id,
                                   source="boot", backend=driver.name)
        try:
            driver.create(spec, owner_pid=owner)
        except BaseException:
            self.ledger.vm_destroyed(vm_id)
            raise
        pid = driver.process_id(spec.name)
        if pid:
            self.ledger.add_process(pid.pid, pid.started, vm_id)
        self.ledger.update_vm(vm_id, state="leased")
        return Placed(driver.storage, spec.name, vm_id, "boot")

    def create_from_disk(self, storage: str, spec_body: dict, disk: str, lease_id: str | None) -> dict:
        """Adopt a standalone disk (a restored backup) as VM ``spec.name``, recorded before it boots."""
        body = dict(spec_body)
        name = check_name(body.pop("name", None), "spec.name")
        spec = parse_vm(name, body, "spec")
        lease = self._lease_for(lease_id)
        if not Path(disk).is_file():
            raise NotFound(f"disk {disk} does not exist")
        driver = backends.backend_for(Path(storage), name)
        vm_id = self.ledger.add_vm(storage, name, spec.to_dict(), "creating", lease_id=lease_id, source="backup",
                                   backend=driver.name)
        self.ledger.add_disk(str(driver.vm_dir(name) / "disk.qcow2"), vm_id, "restored")
        try:
            driver.create_from_disk(spec, Path(disk), lease["owner_pid"] if lease else None)
        except BaseException:
            self.ledger.update_vm(vm_id, state="destroyed")
            self.ledger.remove_disks(vm_id)
            raise
        info = driver.run_info(name)
        self.ledger.add_process(info["pid"], info["create_time"], vm_id)
        self.ledger.update_vm(vm_id, state="leased" if lease_id else "stopped")
        return {"status": "created", "source": "backup", "state": "running", "name": name}

    def _row(self, storage: str, name: str) -> dict:
        row = self.ledger.find_vm(storage, name)
        if row is None:
            if (Path(storage) / name / "vm.json").is_file():
                raise NotFound(f"VM '{name}' in {storage} is not managed by this daemon")
            raise NotFound(f"no VM named '{name}' in {storage} (see `vmfixtures vm list`)")
        return row

    def stop(self, storage: str, name: str, timeout: float | None = None) -> dict:
        row = self._row(storage, name)
        result = self.backend_of(row).stop(name, timeout)
        self.ledger.end_processes(row["id"])
        self.ledger.update_vm(row["id"], state="stopped")
        return {"graceful": result.graceful, "seconds": result.seconds}

    def start(self, storage: str, name: str) -> dict:
        row = self._row(storage, name)
        driver = self.backend_of(row)
        m = driver.start(name)
        info = driver.run_info(name)
        self.ledger.add_process(info["pid"], info["create_time"], row["id"])
        self.ledger.update_vm(row["id"], state="leased" if row["lease_id"] else "stopped")
        return {"accel": m.accel, "ssh_port": m.ssh_port}

    def destroy(self, storage: str, name: str) -> dict:
        row = self._row(storage, name)
        return self._destroy_row(row)

    def _destroy_row(self, row: dict) -> dict:
        driver = self.backend_of(row)
        with self._vm_lock:
            self.ledger.update_vm(row["id"], state="destroying")
            proof = None
            try:
                proof = driver.destroy(row["name"])
            except NotFound:
                pass  # its run's reaper got there first
            self.ledger.vm_destroyed(row["id"])  # its tunnels' ssh lose the guest; their forwarder gives up
        if proof is None:
            return {"pid": None, "process_gone": True, "removed": 0}
        return {"pid": proof.pid, "process_gone": proof.process_gone, "removed": len(proof.removed),
                "leftovers": proof.leftovers}

    # -- tunnels (supervised by a `vmfixtures portforward` process, recorded here) --------
    def tunnel_up(self, storage: str, name: str, kind: str, bind: str, target: str, pid: int,
                  create_time: float, tunnel_id: int | None = None) -> dict:
        """Record a tunnel that now listens (a new one, or a restored one under its old id)."""
        if tunnel_id is not None:
            self.ledger.tunnel_up(tunnel_id, pid, create_time)
            return {"id": tunnel_id}
        row = self.ledger.find_vm(storage, name)
        return {"id": self.ledger.add_tunnel(row["id"] if row else None, kind, bind, target, pid, create_time)}

    def tunnel_down(self, tunnel_id: int) -> dict:
        self.ledger.tunnel_down(tunnel_id)
        return {"id": tunnel_id}

    def list_vms(self) -> list[dict]:
        return [self.describe_vm(r) for r in self.ledger.live_vms()]

    # -- reconciliation ---------------------------------------------------
    def reconcile(self) -> list[str]:
        """Compare the ledger with reality after a (re)start; reclaim what nothing owns."""
        reclaimed = self.reap()  # leases whose owner died while no daemon was watching
        storages = {str(s) for s in self.pool.storages()}
        for row in self.ledger.live_vms():
            storages.add(row["storage"])
            driver = self.backend_of(row)
            lease = self.ledger.lease(row["lease_id"]) if row["lease_id"] else None
            if row["state"] in ("pooled", "creating", "destroying"):
                pid = self._pid(driver, row["name"])
                self._destroy_row(row)
                reclaimed.append(f"{row['state']} VM {row['name']} (pid {pid})")
            elif lease is None or lease["state"] != "active":
                self._destroy_row(row)
                reclaimed.append(f"VM {row['name']} of an ended lease")
            elif not driver.process(row["name"]) and row["state"] == "leased":
                self.ledger.update_vm(row["id"], state="stopped")
                self.ledger.end_processes(row["id"])
                reclaimed.append(f"VM {row['name']} marked stopped (its QEMU is gone)")
        known = {p["pid"] for p in self.ledger.live_processes()}
        for row in self.ledger.live_vms():  # a VM restarted or restored outside the daemon has a new pid
            info = self.backend_of(row).run_info(row["name"])
            if info:
                known.add(info["pid"])
        for proc, cwd in orphan_qemus(storages, known):
            proc.kill()
            reclaimed.append(f"orphan QEMU pid {proc.pid} in {cwd}")
        for pool_backend in self.pool.libvirt_pools():  # restores libvirt went on with after we died
            reclaimed += pool_backend.stray_domains(destroy=True)
        reclaimed += self.pool.load_snapshots()
        for pool_dir in self.pool.storages():
            if not pool_dir.is_dir():
                continue
            live = {r["name"] for r in self.ledger.live_vms() if r["storage"] == str(pool_dir)}
            for d in pool_dir.iterdir():
                if d.name not in live:
                    if (d / "vm.json").exists():
                        backends.backend_for(pool_dir, d.name).destroy(d.name)
                    else:
                        shutil.rmtree(d)
                    reclaimed.append(f"orphan folder {d}")
        for d in orphan_run_dirs():
            stop_run_dir_helpers(d)
            shutil.rmtree(d, ignore_errors=True)
            reclaimed.append(f"orphan socket folder {d}")
        reclaimed += kill_helpers_without_folder()
        for line in reclaimed:
            self.ledger.event("reclaimed", "", line)
        return reclaimed

    @staticmethod
    def _pid(driver: Backend, name: str):
        info = driver.run_info(name)
        return info["pid"] if info else None

    def shutdown(self) -> list[str]:
        """A clean stop ends every lease and drains the pool: nothing would reap them otherwise.
        (A crash, by contrast, leaves them to the next start's reconciliation.)"""
        self.pool.closed = True
        gone = []
        for lease in self.ledger.active_leases():
            gone += self.end_lease(lease["id"], "daemon stopped")
        return gone + self.pool.close()
