"""Helpers every command group shares: which backend, which VMs, the daemon if one runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import errors, paths
from ..backends import Backend, backend_for, chosen, open_backend, recorded_backend
from ..client import Client
from ..spec import load_config


def add_config(p: argparse.ArgumentParser) -> None:
    """The -c/--config option every config-driven command takes."""
    p.add_argument("-c", "--config", default="vmfixtures.yaml", help="YAML config (default: ./vmfixtures.yaml)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def backend_name(args) -> str:
    """--backend, else $VMFIXTURES_BACKEND, else the config's defaults.backend, else qemu."""
    if args.backend:
        return chosen(args.backend, "--backend")
    if not os.environ.get("VMFIXTURES_BACKEND") and getattr(args, "config", None) and Path(args.config).is_file():
        configured = load_config(args.config).backend
        if configured:
            return configured
    return chosen()


def vm_backend(args, name: str | None = None) -> Backend:
    """The backend VM ``name`` (default: the command's VM) was created with; for new VMs, the chosen one."""
    name = name or getattr(args, "name", None)
    storage = Path(args.storage) if args.storage else None
    if name and storage is not None and recorded_backend(storage / name):
        return backend_for(storage, name, quiet=args.quiet)
    backend = open_backend(backend_name(args), storage, quiet=args.quiet)
    if name and recorded_backend(backend.storage / name):
        return backend_for(backend.storage, name, quiet=args.quiet)
    return backend


def named_vms(args, config) -> list[str]:
    if args.all:
        if not config.vms:
            raise errors.ConfigError(f"{config.path}: no VMs declared under 'vms'")
        return list(config.vms)
    if not args.name:
        raise errors.ConfigError("name a VM or pass --all")
    return [args.name]


def daemon_client() -> Client | None:
    """The running daemon's client, unless VMFIXTURES_DAEMON=off or none answers."""
    if os.environ.get("VMFIXTURES_DAEMON", "").lower() in ("off", "0", "no"):
        return None
    client = Client()
    return client if client.alive() else None


def storage_dir(args) -> Path:
    return Path(args.storage or paths.vms_dir()).absolute()


def owner_pid() -> int | None:
    """Test runners set VMFIXTURES_OWNER_PID so that VMs die with them (see `gc`)."""
    value = os.environ.get("VMFIXTURES_OWNER_PID")
    return int(value) if value else None


def target_vms(args, driver, states: tuple[str, ...]) -> list[str]:
    """The VM named on the command line, or with --all every VM of the config in one of ``states``."""
    if not args.all:
        if not args.name:
            raise errors.ConfigError("name a VM or pass --all")
        return [args.name]
    config = load_config(args.config)
    names = [n for n in config.vms if driver.state(n).value in states]
    if not names:
        print(f"no VM of the config is {' or '.join(states)}; nothing to do")
    return names


def vm_or_lease(args) -> tuple[Backend, str]:
    """A VM name in the storage, or a daemon lease id (its first VM)."""
    client = daemon_client()
    if client and not (storage_dir(args) / args.name / "vm.json").exists():
        try:
            vms = client.lease(args.name)["vms"]
        except errors.NotFound:
            vms = None
        if vms:
            return backend_for(Path(vms[0]["storage"]), vms[0]["name"], quiet=args.quiet), vms[0]["name"]
    return vm_backend(args), args.name


def signal_wait() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
