"""The contract every backend (qemu, libvirt, multipass) fulfils."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..machine import Machine
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


class Driver(Protocol):
    name: str

    def names(self) -> list[str]: ...
    def state(self, name: str) -> VMState: ...
    def spec(self, name: str) -> "VMSpec": ...
    def create(self, spec: "VMSpec", start: bool = True) -> CreateResult: ...
    def start(self, name: str) -> "Machine": ...
    def stop(self, name: str) -> StopResult: ...
    def restart(self, name: str) -> "Machine": ...
    def destroy(self, name: str) -> DestroyProof: ...
    def machine(self, name: str) -> "Machine": ...
