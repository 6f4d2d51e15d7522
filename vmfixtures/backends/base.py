"""The contract every backend (qemu, libvirt, multipass) fulfils, and its result types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import Unsupported

if TYPE_CHECKING:
    from ..machine import Machine
    from ..procs import ProcessId
    from ..spec import VMSpec


class VMState(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass
class CreateResult:
    """``created`` for a new VM, ``exists`` when an identical one was already there."""

    name: str
    status: str
    state: VMState

    @property
    def message(self) -> str:
        if self.status == "exists":
            return f"VM '{self.name}' already exists ({self.state.value}) with the same spec; nothing to do"
        return f"VM '{self.name}' created ({self.state.value})"


@dataclass
class StopResult:
    name: str
    graceful: bool
    seconds: float


@dataclass
class DestroyProof:
    """Evidence that a VM is gone: the pid that no longer runs, the files no longer there."""

    name: str
    pid: int | None
    process_gone: bool
    removed: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.process_gone and not self.leftovers


# Optional capabilities: what only some backends can do. A scenario requires one
# with @requires.<name> and skips with the backend's reason where it is missing.
MEMORY_SNAPSHOTS = "memory-snapshots"     # save a running VM's memory, restore clones of it
DIRTY_BITMAPS = "dirty-bitmap-backups"    # incremental disk backups from dirty bitmaps (QMP, libvirt checkpoints)
DISK_HOTPLUG = "disk-hotplug"             # attach and detach data disks while the VM runs
NETWORK_PROFILES = "network-profiles"     # nat / filtered / isolated networks (network.py)
TEMPLATES = "templates"                   # memory snapshots whose RAM file clones share copy-on-write
CAPABILITIES = (MEMORY_SNAPSHOTS, DIRTY_BITMAPS, DISK_HOTPLUG, NETWORK_PROFILES)

# Data disks sit in PCI slots of their own, the same one at every boot and in every
# snapshot (a restored memory image expects its devices where they were).
FIRST_DATA_SLOT, LAST_DATA_SLOT = 0x10, 0x1F


@dataclass(frozen=True)
class DataDisk:
    """A data disk as part of a VM's hardware: its file and the PCI slot it sits in.

    ``state`` is ``attached``, or ``attaching``/``detaching`` while a hot-plug is under way."""

    name: str
    file: Path
    slot: int
    state: str = "attached"

    @property
    def device_id(self) -> str:
        """QEMU's device id and block node name (short: node names are limited to 31 bytes)."""
        return f"vmfx-data{self.slot}"

    def to_dict(self) -> dict:
        return {"name": self.name, "file": str(self.file), "slot": self.slot, "state": self.state}

    @classmethod
    def from_dict(cls, d: dict) -> "DataDisk":
        return cls(d["name"], Path(d["file"]), int(d["slot"]), d.get("state", "attached"))


class Backend(ABC):
    """What every backend does, in the spirit of NixOS's ``BaseMachine``: a few operations
    callers really use. Everything else a caller needs comes through these."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    storage: Path

    @abstractmethod
    def names(self) -> list[str]:
        """The VMs of this backend recorded in ``storage``."""

    @abstractmethod
    def state(self, name: str) -> VMState: ...

    @abstractmethod
    def spec(self, name: str) -> VMSpec: ...

    @abstractmethod
    def create(self, spec: VMSpec, start: bool = True, owner_pid: int | None = None) -> CreateResult:
        """Create (and by default boot) a VM; the same spec again is "exists", another is Mismatch."""

    @abstractmethod
    def start(self, name: str) -> Machine: ...

    @abstractmethod
    def stop(self, name: str, timeout: float | None = None) -> StopResult:
        """Press the power button; force the VM off once ``timeout`` has passed."""

    @abstractmethod
    def destroy(self, name: str) -> DestroyProof:
        """Kill the VM and remove everything it had; proves what is gone."""

    @abstractmethod
    def process_id(self, name: str) -> ProcessId | None:
        """The host process that runs the VM (pid + start time), None when it is not running."""

    @abstractmethod
    def machine(self, name: str) -> Machine:
        """The running VM's guest channel: exec, files in and out, console."""

    def evidence(self, name: str) -> dict[str, Path]:
        """Files worth attaching to a report when a scenario with this VM fails."""
        return {}

    def restart(self, name: str) -> Machine:
        self.stop(name)
        return self.start(name)

    # -- data disks (capability DISK_HOTPLUG) ------------------------------------
    def data_disks(self, name: str) -> list[DataDisk]:
        """The data disks VM ``name``'s record lists (it boots with them)."""
        self.require(DISK_HOTPLUG, "data disks")
        return []

    def record_data_disks(self, name: str, disks: list[DataDisk]) -> None:
        """Replace the data disks VM ``name``'s record lists."""
        self.require(DISK_HOTPLUG, "data disks")

    def attach_disk(self, name: str, disk: DataDisk) -> None:
        """Hot-plug ``disk`` into running VM ``name``; on failure nothing of it is left in the VM."""
        self.require(DISK_HOTPLUG, "attaching a disk")

    def detach_disk(self, name: str, disk: DataDisk) -> None:
        """Hot-unplug ``disk`` from running VM ``name`` and wait until the guest has let it go."""
        self.require(DISK_HOTPLUG, "detaching a disk")

    def block_devices(self, name: str) -> dict[str, str]:
        """Device id -> file of every data disk the running hypervisor has (the system disk left out),
        asked of the hypervisor itself, not of any record."""
        self.require(DISK_HOTPLUG, "listing block devices")
        return {}

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    #: why this backend lacks an optional capability, where there is more to say than that it does
    lacking: ClassVar[dict[str, str]] = {}

    def why_not(self, capability: str) -> str:
        """The reason this backend does not offer ``capability``."""
        why = f"the {self.name} backend does not offer {capability}"
        return f"{why}: {self.lacking[capability]}" if capability in self.lacking else why

    def require(self, capability: str, what: str) -> None:
        """Raise Unsupported naming the backend when it lacks ``capability``."""
        if capability not in self.capabilities:
            reason = f" ({self.lacking[capability]})" if capability in self.lacking else ""
            raise Unsupported(f"{what} needs {capability}, which the {self.name} backend does not offer{reason} "
                              f"(it offers: {', '.join(sorted(self.capabilities)) or 'none of the optional ones'})")
