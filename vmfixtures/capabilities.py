"""What this host can do, so the spec can skip with a reason instead of failing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


@dataclass
class Capability:
    available: bool
    reason: str = ""


def probe_qemu() -> Capability:
    missing = [t for t in ("qemu-system-x86_64", "qemu-img") if shutil.which(t) is None]
    if missing:
        return Capability(False, f"QEMU is not installed ({', '.join(missing)} not found; "
                                 "install qemu-system-x86 and qemu-utils)")
    return Capability(True)


def probe_multipass() -> Capability:
    if shutil.which("multipass") is None:
        return Capability(False, "Multipass is not installed (it ships as a snap, which this host cannot run)")
    return Capability(True)


def probe_libvirt() -> Capability:
    """libvirt-python is importable and libvirtd answers at the configured URI."""
    from .errors import VmfError

    try:
        from .backends.libvirt import connection, uri

        connection().getLibVersion()
    except VmfError as exc:
        return Capability(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - any libvirt failure means: not usable here
        return Capability(False, f"libvirt at {uri()} is not usable: {exc}")
    return Capability(True)


def probe_backend(name: str) -> Capability:
    """Whether VMs can run on backend ``name`` here."""
    return {"qemu": probe_qemu, "libvirt": probe_libvirt, "multipass": probe_multipass}[name]()


# Debian packages that carry each architecture's system emulator
EMULATOR_PACKAGES = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}


def probe_arch(arch: str) -> Capability:
    """Whether VMs of architecture ``arch`` can run here: the emulator is installed and the image
    builder has a recipe for that architecture. The reason names each thing that is missing."""
    from .images.recipe import ARCHS

    missing = []
    emulator = f"qemu-system-{arch}"
    if shutil.which(emulator) is None:
        missing.append(f"{emulator} is not installed (Debian package {EMULATOR_PACKAGES.get(arch, 'unknown')})")
    if arch not in ARCHS:
        missing.append(f"there is no {arch} guest image recipe (the image builder makes {', '.join(ARCHS)} images)")
    if missing:
        return Capability(False, f"architecture {arch} cannot run here: {'; '.join(missing)}")
    return Capability(True)


def require_arch(spec) -> None:
    """Raise Unsupported, naming what is missing, when ``spec``'s architecture cannot run here."""
    from .errors import Unsupported

    cap = probe_arch(spec.arch)
    if not cap.available:
        raise Unsupported(f"VM '{spec.name}': {cap.reason}; nothing was created")


def probe_claude() -> Capability:
    missing = [v for v in ("ANTHROPIC_API_KEY", "VMFIXTURES_CLAUDE_TARBALL") if not os.environ.get(v)]
    if missing:
        return Capability(False, f"no credentials or artifact for Claude Code ({', '.join(missing)} not set)")
    return Capability(True)


def probe_systemd() -> Capability:
    from .daemon.systemd import booted

    if shutil.which("systemctl") is None or not booted():
        return Capability(False, "systemd is not the init system on this host (/run/systemd/system is missing)")
    return Capability(True)


def probe_root() -> Capability:
    if os.geteuid() != 0:
        return Capability(False, f"this run is uid {os.geteuid()}: network namespaces for test services "
                                 "and nftables rules need root")
    return Capability(True)


PROBES = {"root": probe_root, "systemd": probe_systemd, "qemu": probe_qemu, "multipass": probe_multipass, "libvirt": probe_libvirt, "claude": probe_claude}


def probe(name: str, accel_name: str | None = None, backend=None) -> Capability:
    """Probe ``name``: a host tool (qemu, libvirt, multipass, systemd, claude), ``kvm`` (needs the
    accelerator in use), or an optional backend capability (memory-snapshots, ...) of ``backend``.
    An unknown name is an error, never a silent skip: a misspelled tag must not hide a scenario."""
    from .backends.base import CAPABILITIES
    from .errors import ConfigError

    if name == "kvm":
        if accel_name == "kvm":
            return Capability(True)
        return Capability(False, "KVM is not usable here (a KVM probe boot did not finish; VMs run under TCG)")
    if name in CAPABILITIES:
        if backend is None:
            return Capability(False, f"no backend to offer {name}")
        if backend.supports(name):
            return Capability(True)
        return Capability(False, backend.why_not(name))
    if name not in PROBES:
        known = ", ".join(sorted([*PROBES, "kvm", "daemon", *CAPABILITIES]))
        raise ConfigError(f"@requires.{name}: unknown capability (known: {known})")
    return PROBES[name]()
