"""VM backends behind one protocol (``base.Backend``): qemu (default), libvirt, multipass.

Nothing outside this package constructs a backend: ``open_backend`` makes one
by name, ``backend_for`` opens the one a VM was created with (its ``vm.json``
records it), and ``chosen`` says which one new VMs get (argument,
``VMFIXTURES_BACKEND``, or the config's ``defaults.backend``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError
from .base import Backend, CreateResult, DestroyProof, StopResult, VMState

__all__ = [
    "NAMES",
    "Backend",
    "CreateResult",
    "DestroyProof",
    "StopResult",
    "VMState",
    "backend_for",
    "chosen",
    "open_backend",
    "recorded_backend",
]

NAMES = ("qemu", "libvirt", "multipass")
DEFAULT = "qemu"


def chosen(explicit: str | None = None, where: str = "backend") -> str:
    """The backend for new VMs: ``explicit``, else $VMFIXTURES_BACKEND, else qemu. Unknown: ConfigError."""
    name = explicit or os.environ.get("VMFIXTURES_BACKEND") or DEFAULT
    if explicit is None and os.environ.get("VMFIXTURES_BACKEND"):
        where = "VMFIXTURES_BACKEND"
    if name not in NAMES:
        raise ConfigError(f"{where}: unknown backend {name!r} (known: {', '.join(NAMES)})")
    return name


def open_backend(name: str, storage: Path | None = None, quiet: bool = False) -> Backend:
    """The backend called ``name`` over ``storage`` (the folder of VM records)."""
    if name == "qemu":
        from .qemu import QemuBackend

        return QemuBackend(storage=storage, quiet=quiet)
    if name == "libvirt":
        from .libvirt import LibvirtBackend

        return LibvirtBackend(storage=storage, quiet=quiet)
    if name == "multipass":
        from .multipass import MultipassBackend

        return MultipassBackend(storage=storage, quiet=quiet)
    raise ConfigError(f"backend: unknown backend {name!r} (known: {', '.join(NAMES)})")


def recorded_backend(vm_dir: Path) -> str | None:
    """The backend named in a VM's record, or None when there is no readable record."""
    try:
        meta = json.loads((Path(vm_dir) / "vm.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("backend") or meta.get("driver") or DEFAULT


def backend_for(storage: Path, name: str, default: str | None = None, quiet: bool = True) -> Backend:
    """The backend VM ``name`` in ``storage`` was created with; ``default`` (or the chosen one)
    when it has no record yet."""
    kind = recorded_backend(Path(storage) / name) or chosen(default)
    return open_backend(kind, storage, quiet)
