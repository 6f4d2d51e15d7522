"""The warm pool: one memory snapshot per VM spec, and restored VMs kept idle.

Per spec (everything but the name): boot a template once, wait for ready,
snapshot it (memory + frozen disk). A lease then gets, fastest first:

1. ``pool``: an idle VM restored in advance; handing it off is a rename of
   its folder into the requester's storage plus a new hostname and clock;
2. ``template`` or ``restore``: a fresh overlay on the snapshot disk and an
   incoming migration from the snapshot file. ``template`` where the backend
   can (qemu): the template's guest RAM is a file the clone maps
   copy-on-write, so the stream holds only device state and idle clones
   share the template's pages; ``restore`` elsewhere (libvirt), or with
   VMFIXTURES_TEMPLATES=off: the whole RAM is in the stream;
3. ``boot``: the template boot itself, once per spec and image.

A snapshot's key covers the image (its recipe hash), the spec and whether its
RAM is a template file, so a new image, another spec or the other kind of
snapshot never restores a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path


from ..backends import Backend, open_backend
from ..backends.base import MEMORY_SNAPSHOTS, TEMPLATES
from ..errors import VmfError
from ..spec import VMSpec
from .ledger import Ledger


@dataclass
class Placed:
    """Where a VM ended up and how it got there."""

    storage: Path
    name: str
    vm_id: int
    source: str  # pool | template | restore | boot


def templates_wanted() -> bool:
    """VMFIXTURES_TEMPLATES=off makes snapshots with the whole RAM in the stream (the path before templates)."""
    value = os.environ.get("VMFIXTURES_TEMPLATES", "on").lower()
    if value not in ("on", "off", "1", "0", "yes", "no"):
        raise VmfError(f"VMFIXTURES_TEMPLATES={value!r}: expected on or off")
    return value in ("on", "1", "yes")


# What a snapshot's guest was set up with beyond its image and kernel arguments: bump when that changes
# (3: the clone helper's own virtio-serial port; 4: the q35 machine with a bridge for data disks), so that
# no daemon restores a template made the old way.
GUEST_SETUP = 4


def pool_key(spec: VMSpec, image_key: str, backend: str = "qemu", template: bool = False,
             kernel_args: str = "") -> str:
    # The network's profile is part of the VM's hardware and of what the snapshot's QEMU was started with; a
    # filtered network's allowed ports are not (they are the host's firewall rules for the clone's own passt,
    # made at each launch), so one snapshot serves every allow-list. The kernel's arguments are what its guest
    # booted with (a restored guest keeps them, whatever its clone is started with).
    fields = {"image": image_key, "cpus": spec.cpus, "memory": spec.memory, "disk": spec.disk, "image_name": spec.image,
              "network": spec.network.profile, "guest": GUEST_SETUP, "kernel_args": kernel_args}
    if backend != "qemu":  # qemu's keys predate backends; keep them valid
        fields["backend"] = backend
    if template:  # a template's RAM is a file beside the stream: another kind of snapshot
        fields["ram"] = "template"
    body = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def idle_key(spec: VMSpec, snapshot_key: str) -> str:
    """Which idle VMs may be handed to a lease of ``spec`` (whose snapshot is ``snapshot_key``): the
    snapshot's, and for a filtered network with its own allow-list, that list. An idle VM runs with its
    firewall rules already made, so it goes only to a lease asking for exactly those."""
    key = snapshot_key
    config = spec.network.to_config()
    if isinstance(config, dict):
        key += "-" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return key


USED = "used"  # a file in each snapshot folder; its mtime is when a lease last asked for that spec
KEEP_SNAPSHOTS = 16  # at start-up, the most recently wanted snapshots kept (~95 MiB each on disk): a
# whole run on both backends wants about ten specs, and a few more of one run only (a random allowed port)
SNAPSHOT_MAX_AGE_S = 7 * 86400  # ... and none that no lease asked for in this long


def next_refill(idle: list[dict], wanted: dict[str, float], idle_per_spec: int,
                max_idle: int) -> tuple[str | None, dict | None]:
    """What a refill does next: (the key to restore an idle VM for, or None when the pool is as it
    should be; an idle VM to destroy first to make room, or None).

    The most recently wanted specs come first. A full pool makes room only by evicting an idle VM
    of a spec wanted less recently: idle VMs of specs nobody asks for any more (a spec with another
    port, an earlier run's) must not hold every place for good."""
    for key in sorted(wanted, key=lambda k: -wanted[k]):
        if sum(1 for v in idle if v["pool_key"] == key) >= idle_per_spec:
            continue
        if len(idle) < max_idle:
            return key, None
        victims = [v for v in idle if wanted.get(v["pool_key"], 0.0) < wanted[key]]
        if not victims:
            return None, None
        return key, min(victims, key=lambda v: (wanted.get(v["pool_key"], 0.0), -v["id"]))
    return None, None


def snapshots_to_forget(used: dict[str, float], in_use: set[str], now: float,
                        keep: int = KEEP_SNAPSHOTS, max_age: float = SNAPSHOT_MAX_AGE_S) -> dict[str, str]:
    """Snapshot keys to remove at start-up, each with why: beyond the ``keep`` most recently wanted,
    or not wanted for ``max_age`` seconds. A snapshot a live VM still uses (its disk backs that
    VM's overlay) is kept whatever its age."""
    gone = {}
    for rank, key in enumerate(sorted(used, key=lambda k: -used[k])):
        if key in in_use:
            continue
        if now - used[key] > max_age:
            gone[key] = f"not wanted for {(now - used[key]) / 86400:.0f} days"
        elif rank >= keep:
            gone[key] = f"beyond the {keep} most recently wanted"
    return gone


class Pool:
    """Snapshots and idle restored VMs under ``home``; ``idle_per_spec`` kept ready per spec, for the
    specs leases asked for most recently, at most ``max_idle`` in all."""

    def __init__(self, home: Path, ledger: Ledger, idle_per_spec: int = 1, max_idle: int = 2, quiet: bool = True,
                 templates: bool | None = None):
        self.home = Path(home)
        self.templates = templates_wanted() if templates is None else templates
        self.ledger = ledger
        self.idle_per_spec = idle_per_spec
        self.max_idle = max_idle
        self.quiet = quiet
        self._backends: dict[str, Backend] = {}
        self.driver = self.backend("qemu")
        self.snapshots = self.home / "snapshots"
        self._lock = threading.Lock()
        self._refill_lock = threading.Lock()
        self.closed = False
        self._snap_locks: dict[str, threading.Lock] = {}
        self._counter = 0
        self.specs: dict[str, tuple[VMSpec, str]] = {}  # specs (and backends) seen, so refills know what to restore
        self.wanted: dict[str, float] = {}  # pool key -> when a lease last asked for it (refills serve the newest)

    def _folder(self, kind: str) -> Path:
        return self.home / ("pool" if kind == "qemu" else f"pool-{kind}")

    def backend(self, kind: str) -> Backend:
        """The pool's own storage on backend ``kind`` (idle VMs and templates live there)."""
        if kind not in self._backends:
            self._backends[kind] = open_backend(kind, self._folder(kind), quiet=self.quiet)
        return self._backends[kind]

    def storages(self) -> list[Path]:
        """Every pool folder: of the backends used now, and of those used before a restart."""
        for kind in ("qemu", "libvirt"):
            if self._folder(kind).is_dir():
                self.backend(kind)
        return [b.storage for b in self._backends.values()]

    def libvirt_pools(self) -> list[Backend]:
        """The libvirt pool's backend when this daemon has used libvirt (its folder exists)."""
        if (self.home / "pool-libvirt").is_dir():
            return [self.backend("libvirt")]
        return []

    def templated(self, kind: str) -> bool:
        """Whether snapshots on backend ``kind`` are templates (RAM in a file clones share)."""
        return self.templates and self.backend(kind).supports(TEMPLATES)

    def key(self, spec: VMSpec, kind: str = "qemu") -> str:
        """The key of ``spec``'s snapshot (its folder's name)."""
        accel = getattr(self.backend(kind), "accel", None)  # backends that boot our kernel themselves
        return pool_key(spec, self.driver.image().key, kind, self.templated(kind),
                        accel().kernel_args("") if accel else "")

    # -- snapshots ---------------------------------------------------------
    def snapshot_for(self, spec: VMSpec, kind: str = "qemu") -> tuple[Path, bool]:
        """The snapshot for ``spec`` on backend ``kind`` (and whether it had to be made now)."""
        key = self.key(spec, kind)
        driver = self.backend(kind)
        final = self.snapshots / key
        with self._lock:
            lock = self._snap_locks.setdefault(key, threading.Lock())
        with lock:
            if (final / "snapshot.json").is_file():
                return final, False
            name = f"tmpl-{key}"
            template = dataclasses.replace(spec, name=name)
            tmp = self.snapshots / f"{key}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            vm_id = self.ledger.add_vm(str(driver.storage), name, template.to_dict(), "creating", source="boot",
                                       backend=kind)
            try:
                if self.templated(kind):
                    driver.create(template, template=True)
                else:
                    driver.create(template)
                self._record_process(vm_id, driver, name)
                driver.snapshot(name, tmp)
                _write_backend(tmp, kind)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if driver.state(name).value != "missing":
                    driver.destroy(name)
                raise
            finally:
                self.ledger.update_vm(vm_id, state="destroyed")
                self.ledger.end_processes(vm_id)
            self.ledger.add_disk(str(final / "disk.qcow2"), None, "snapshot")
            self.ledger.event("snapshot", key, {"spec": template.resources()})
            return final, True

    # -- idle VMs ------------------------------------------------------------
    def _record_process(self, vm_id: int, driver: Backend, name: str) -> None:
        pid = driver.process_id(name)
        if pid:
            self.ledger.add_process(pid.pid, pid.started, vm_id)

    def restore(self, driver: Backend, spec: VMSpec, lease_id: str | None, owner_pid: int | None,
                state: str, pool_key_: str | None = None) -> Placed:
        """Restore ``spec`` from its snapshot into ``driver``'s storage (recorded before acting)."""
        driver.require(MEMORY_SNAPSHOTS, "a VM from the warm pool")
        snap, made = self.snapshot_for(spec, driver.name)
        how = "boot" if made else "template" if self.templated(driver.name) else "restore"
        vm_id = self.ledger.add_vm(str(driver.storage), spec.name, spec.to_dict(), "creating", lease_id=lease_id,
                                   pool_key=pool_key_, source=how, backend=driver.name)
        try:
            self.ledger.add_disk(str(driver.vm_dir(spec.name) / "disk.qcow2"), vm_id, "overlay")  # before it exists
            boot = driver.create_from_snapshot(spec, snap, owner_pid)
            self.ledger.add_process(boot.info["pid"], boot.info["create_time"], vm_id)
            driver.wait_restored(spec.name, boot)
            driver.release(spec.name)  # the requester connects to the guest agent next
        except BaseException:
            if driver.state(spec.name).value != "missing":
                driver.destroy(spec.name)  # a VM that failed to restore leaves no folder behind
            self.ledger.vm_destroyed(vm_id)
            raise
        self.ledger.update_vm(vm_id, state=state)
        return Placed(driver.storage, spec.name, vm_id, how)

    def refill(self) -> int:
        """Restore idle VMs until each known spec has ``idle_per_spec`` (bounded by ``max_idle``).

        One refill at a time: concurrent triggers would each see the pool short and over-fill it."""
        if self.closed or not self._refill_lock.acquire(blocking=False):
            return 0
        try:
            return self._refill()
        finally:
            self._refill_lock.release()

    def close(self) -> list[str]:
        """Stop refilling, wait for a refill in flight, then destroy every idle VM."""
        self.closed = True
        with self._refill_lock:
            return self.drain()

    def _refill(self) -> int:
        made = 0
        while not self.closed:
            with self._lock:  # take() claims idle VMs under it: a victim is never one being handed off
                key, victim = next_refill(self.ledger.live_vms(state="pooled"), dict(self.wanted),
                                          self.idle_per_spec, self.max_idle)
                if victim is not None:
                    self.ledger.update_vm(victim["id"], state="destroying")
            if key is None:
                return made
            if victim is not None:
                self._destroy_idle(victim)
            spec, kind = self.specs[key]
            with self._lock:
                self._counter += 1
                name = f"p{os.getpid() % 1000}-{key[:8]}-{self._counter}"
            pooled = dataclasses.replace(spec, name=name)  # all of the spec: the network is hardware too
            self.restore(self.backend(kind), pooled, None, None, "pooled", key)
            made += 1
        return made

    def _want(self, key: str, snapshot: str) -> None:
        """A lease asked for idle ``key`` now: refills serve it before keys asked for earlier, and its
        ``snapshot`` counts as used at the next start-up."""
        self.wanted[key] = time.time()
        try:
            os.utime(self.snapshots / snapshot / USED)
        except FileNotFoundError:  # no snapshot yet (it is made next), or one made before this stamp
            if (self.snapshots / snapshot / "snapshot.json").is_file():
                (self.snapshots / snapshot / USED).touch()

    def take(self, spec: VMSpec, storage: Path, lease_id: str | None, owner_pid: int | None,
             kind: str = "qemu") -> Placed | None:
        """Hand an idle VM over as ``spec.name`` in ``storage``, or None if none is idle for this spec."""
        if not self.backend(kind).supports(MEMORY_SNAPSHOTS):
            return None
        snapshot = self.key(spec, kind)
        key = idle_key(spec, snapshot)
        self.specs.setdefault(key, (spec, kind))
        self._want(key, snapshot)
        with self._lock:
            idle = [v for v in self.ledger.live_vms(state="pooled") if v["pool_key"] == key]
            if not idle:
                return None
            row = idle[0]
            self.ledger.update_vm(row["id"], state="leased", lease_id=lease_id)  # claimed before it moves
        src = self.backend(kind).vm_dir(row["name"])
        dst = Path(storage) / spec.name
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
        except OSError:  # another file system, or a name conflict: leave it idle
            self.ledger.update_vm(row["id"], state="pooled", lease_id=None)
            return None
        self.ledger.update_vm(row["id"], storage=str(storage), name=spec.name, spec=spec.to_dict())
        self.ledger.move_disk(str(src / "disk.qcow2"), str(dst / "disk.qcow2"))
        target = dst / "run"
        if target.is_symlink():
            (Path(os.readlink(target)) / "vm_dir").write_text(str(dst.resolve()))
        driver = open_backend(kind, Path(storage), quiet=True)
        driver.claim(spec.name, spec, owner_pid)
        self.ledger.update_vm(row["id"], source="pool")
        try:
            driver.personalize(driver.machine(spec.name), clock=False)  # set at restore; it kept ticking since
            driver.release(spec.name)
        except VmfError:
            driver.destroy(spec.name)
            self.ledger.update_vm(row["id"], state="destroyed")
            return None
        return Placed(Path(storage), spec.name, row["id"], "pool")

    def drain(self) -> list[str]:
        """Destroy every idle VM (shutdown, or a new image)."""
        gone = []
        for row in self.ledger.live_vms(state="pooled"):
            self.ledger.update_vm(row["id"], state="destroying")
            self._destroy_idle(row)
            gone.append(row["name"])
        return gone

    def _destroy_idle(self, row: dict) -> None:
        """Destroy an idle VM already marked ``destroying`` in the ledger."""
        driver = self.backend(row["backend"])
        if driver.state(row["name"]).value != "missing":
            driver.destroy(row["name"])
        self.ledger.vm_destroyed(row["id"])

    def load_snapshots(self) -> list[str]:
        """At start-up: forget half-made and stale snapshots (another image), remember the specs of the rest
        so that ``refill`` restores idle VMs for them before anyone asks."""
        gone = []
        if not self.snapshots.is_dir():
            return gone
        image_key = self.driver.image().key
        built = self.driver.image().disk.stat().st_mtime  # a rebuilt image keeps its key, not its blocks
        used: dict[str, float] = {}  # snapshot key -> when a lease last asked for it
        for d in sorted(self.snapshots.iterdir()):
            meta = d / "snapshot.json"
            if d.name.endswith(".partial") or not meta.is_file():
                shutil.rmtree(d, ignore_errors=True)
                gone.append(f"half-made snapshot {d}")
                continue
            snap = json.loads(meta.read_text())
            spec = VMSpec.from_dict(snap["spec"])
            kind = snap.get("backend", "qemu")
            # self.key covers VMFIXTURES_TEMPLATES: the other kind of snapshot goes too (and its RAM file)
            if snap["image"] != image_key or self.key(spec, kind) != d.name or snap.get("created_at", 0) < built:
                self._drop_snapshot(d)
                why = (f"image {snap['image']}, now {image_key}" if snap["image"] != image_key else
                       "its image was rebuilt since" if snap.get("created_at", 0) < built else
                       "made under another key: another kind of snapshot, or keys that covered more")
                gone.append(f"stale snapshot {d} ({why})")
                continue
            stamp = d / USED
            used[d.name] = stamp.stat().st_mtime if stamp.exists() else snap.get("created_at", 0.0)
            if idle_key(spec, d.name) == d.name:  # not one allow-list's: a lease of its own spec fills the pool
                self.specs.setdefault(d.name, (spec, kind))
                self.wanted.setdefault(d.name, used[d.name])
        forget = snapshots_to_forget(used, self._snapshots_in_use(), time.time())
        for key, why in forget.items():
            d = self.snapshots / key
            self._drop_snapshot(d)
            self.specs.pop(key, None)
            self.wanted.pop(key, None)
            gone.append(f"unused snapshot {d} ({why})")
        return gone

    def _drop_snapshot(self, folder: Path) -> None:
        """Remove a snapshot's folder (its RAM file goes with it) and its disk's ledger row."""
        shutil.rmtree(folder, ignore_errors=True)
        self.ledger.remove_disk_path(str(folder / "disk.qcow2"))

    def _snapshots_in_use(self) -> set[str]:
        """Keys of the snapshots live VMs were restored from (each one's disk backs that VM's overlay)."""
        used = set()
        for row in self.ledger.live_vms():
            meta = open_backend(row["backend"] or "qemu", Path(row["storage"]), quiet=True)._meta_or_none(row["name"])
            if meta and meta.get("snapshot") and Path(meta["snapshot"]).parent == self.snapshots:
                used.add(Path(meta["snapshot"]).name)
        return used


def _write_backend(snapshot: Path, kind: str) -> None:
    """Note in snapshot.json which backend's memory format the snapshot holds."""
    meta = snapshot / "snapshot.json"
    data = json.loads(meta.read_text())
    data["backend"] = kind
    meta.write_text(json.dumps(data, indent=2) + "\n")

