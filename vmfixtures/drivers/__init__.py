"""VM backends behind one protocol. ``qemu`` (direct QEMU + QMP) is the default."""

from .base import Driver, VMState

__all__ = ["Driver", "VMState", "get_driver"]


def get_driver(name: str = "qemu", **kwargs) -> Driver:
    """The driver called ``name``; only ``qemu`` exists so far."""
    if name == "qemu":
        from .qemu import QemuDriver

        return QemuDriver(**kwargs)
    from ..errors import ConfigError

    raise ConfigError(f"unknown driver '{name}' (available: qemu)")
