"""Data disks: qcow2 files that are attached to a running VM and detached again without stopping it.

A storage folder keeps its data disks in ``<storage>/.disks/<name>.qcow2``
(the dot keeps the folder from ever being a VM's: VM names start with a
letter or digit). The records are the files themselves and the VMs':

- a disk exists when its file does; its size is the one in its qcow2 header;
- the VM a disk is attached to lists it in its record (``vm.json``, written by
  its backend) with the PCI slot it sits in. The VM boots with the disks its
  record lists, so an attachment survives stop and start; destroying the VM
  drops its record and so detaches (never deletes) its disks.

Every change holds one lock per storage (``.disks/.lock``), so two operators
cannot attach one disk to two VMs. A change is recorded before it is acted on
(``attaching``/``detaching``) and undone when it fails: a refused hot-plug
leaves neither a record nor a half-attached device. With a fixture daemon the
ledger has a row per disk too (``daemon/service.py``).
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .backends import Backend, VMState, backend_for, recorded_backend
from .backends.base import DISK_HOTPLUG, FIRST_DATA_SLOT, LAST_DATA_SLOT, DataDisk
from .errors import ConfigError, InUse, Mismatch, MissingDependency, NotFound, VmfError
from .sizes import format_size, parse_size
from .spec import NAME_RE

FOLDER = ".disks"
MIN_SIZE = 1024**2  # qemu-img rounds smaller sizes up to a cluster; a disk under 1 MiB is a typo
QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class DiskInfo:
    """One data disk as ``disk ls`` shows it."""

    name: str
    file: Path
    size: int
    vm: str | None  # the VM it is attached to, None when detached

    def to_dict(self) -> dict:
        return {"name": self.name, "file": str(self.file), "size": self.size, "size_human": format_size(self.size),
                "attached_to": self.vm}


def check_disk_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"disk name: {name!r} is not a valid disk name "
                          "(lowercase letters, digits and '-', at most 40, starting with a letter or digit)")
    return name


def qcow2_size(path: Path) -> int:
    """The virtual size in a qcow2 header (bytes 24..32, big-endian); read while QEMU has the file open."""
    with open(path, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise VmfError(f"{path} is not a qcow2 disk")
    return struct.unpack(">Q", header[24:32])[0]


def free_slot(used: set[int]) -> int:
    """The lowest PCI slot for data disks that ``used`` leaves free."""
    for slot in range(FIRST_DATA_SLOT, LAST_DATA_SLOT + 1):
        if slot not in used:
            return slot
    raise InUse(f"all {LAST_DATA_SLOT - FIRST_DATA_SLOT + 1} data disk slots are in use")


class Disks:
    """The data disks of one storage folder."""

    def __init__(self, storage: Path, quiet: bool = True):
        self.storage = Path(storage).absolute()
        self.folder = self.storage / FOLDER
        self.quiet = quiet

    def path(self, name: str) -> Path:
        return self.folder / f"{check_disk_name(name)}.qcow2"

    @contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.qcow2") if NAME_RE.match(p.stem))

    def _backend(self, vm: str) -> Backend:
        return backend_for(self.storage, vm, quiet=self.quiet)

    def attachments(self) -> dict[str, tuple[str, DataDisk]]:
        """Disk name -> (VM, its record of the disk), from every VM record in the storage."""
        found: dict[str, tuple[str, DataDisk]] = {}
        if not self.storage.is_dir():
            return found
        for d in sorted(self.storage.iterdir()):
            if not recorded_backend(d):
                continue
            backend = self._backend(d.name)
            if not backend.supports(DISK_HOTPLUG):
                continue
            for disk in backend.data_disks(d.name):
                found[disk.name] = (d.name, disk)
        return found

    def info(self, name: str) -> DiskInfo:
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"no disk named '{name}' in {self.storage} (see `vmfixtures disk ls`)")
        vm = self.attachments().get(name)
        return DiskInfo(name, path, qcow2_size(path), vm[0] if vm else None)

    def list(self) -> list[DiskInfo]:
        attached = self.attachments()
        rows = []
        for name in self.names():
            path = self.path(name)
            try:
                size = qcow2_size(path)
            except (OSError, VmfError):
                continue  # removed meanwhile, or not ours to describe
            rows.append(DiskInfo(name, path, size, attached[name][0] if name in attached else None))
        return rows

    # -- changes --------------------------------------------------------------
    def create(self, name: str, size: object) -> DiskInfo:
        """A new, empty qcow2 disk of ``size`` (bytes, or "1G" and the like)."""
        path = self.path(name)
        nbytes = parse_size(size, "--size")
        if nbytes < MIN_SIZE:
            raise ConfigError(f"--size: {size!r} is smaller than the smallest data disk (1M)")
        with self._locked():
            if path.exists():
                raise Mismatch(f"disk '{name}' already exists in {self.storage} ({path}); "
                               "remove it first or choose another name")
            partial = path.with_name(f".{path.name}.partial")
            try:
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(partial), str(nbytes)],
                               check=True, capture_output=True, text=True)
                os.rename(partial, path)
            except FileNotFoundError:
                raise MissingDependency("'qemu-img' is needed to create disks: install qemu-utils") from None
            except subprocess.CalledProcessError as exc:
                raise VmfError(f"qemu-img create failed for disk '{name}': {exc.stderr.strip()}") from None
            finally:
                partial.unlink(missing_ok=True)
        return DiskInfo(name, path, nbytes, None)

    def attach(self, name: str, vm: str) -> tuple[DataDisk, str]:
        """Attach disk ``name`` to VM ``vm``: hot-plugged when it runs, at its next boot otherwise.
        Returns the disk's record and how: ``hot`` (plugged in now), ``cold`` (the VM is stopped and
        boots with it) or ``already`` (it was attached there; nothing changed)."""
        path = self.path(name)
        with self._locked():
            if not path.is_file():
                raise NotFound(f"no disk named '{name}' in {self.storage} (see `vmfixtures disk ls`)")
            if not recorded_backend(self.storage / vm):
                raise NotFound(f"no VM named '{vm}' in {self.storage} (see `vmfixtures vm list`)")
            backend = self._backend(vm)
            backend.require(DISK_HOTPLUG, f"attaching disk '{name}'")
            holder = self.attachments().get(name)
            if holder and holder[0] != vm:
                raise InUse(f"disk '{name}' is attached to VM '{holder[0]}'; detach it first "
                            f"(`vmfixtures disk detach {name}`)")
            disks = backend.data_disks(vm)
            if holder:
                return holder[1], "already"
            disk = DataDisk(name, path, free_slot({d.slot for d in disks}), "attaching")
            running = backend.state(vm) == VMState.RUNNING
            backend.record_data_disks(vm, [*disks, disk])  # recorded before it is acted on
            try:
                if running:
                    backend.attach_disk(vm, disk)
            except BaseException:
                backend.record_data_disks(vm, disks)
                raise
            done = DataDisk(name, path, disk.slot)
            backend.record_data_disks(vm, [*disks, done])
            return done, "hot" if running else "cold"

    def detach(self, name: str) -> tuple[str | None, bool]:
        """Detach disk ``name`` from its VM (hot-unplugged when the VM runs). Returns (the VM, whether
        it was unplugged now); (None, False) when it was not attached."""
        path = self.path(name)
        with self._locked():
            if not path.is_file() and name not in self.attachments():
                raise NotFound(f"no disk named '{name}' in {self.storage} (see `vmfixtures disk ls`)")
            holder = self.attachments().get(name)
            if not holder:
                return None, False
            vm, disk = holder
            backend = self._backend(vm)
            others = [d for d in backend.data_disks(vm) if d.name != name]
            running = backend.state(vm) == VMState.RUNNING
            if running:
                backend.record_data_disks(vm, [*others, DataDisk(disk.name, disk.file, disk.slot, "detaching")])
                try:
                    backend.detach_disk(vm, disk)
                except BaseException:
                    backend.record_data_disks(vm, [*others, disk])  # still attached: say so
                    raise
            backend.record_data_disks(vm, others)
            return vm, running

    def remove(self, name: str) -> Path:
        """Delete a detached disk's file. An attached one is refused."""
        path = self.path(name)
        with self._locked():
            if not path.is_file():
                raise NotFound(f"no disk named '{name}' in {self.storage} (see `vmfixtures disk ls`)")
            holder = self.attachments().get(name)
            if holder:
                raise InUse(f"disk '{name}' is attached to VM '{holder[0]}'; detach it first "
                            f"(`vmfixtures disk detach {name}`)")
            path.unlink()
        return path
