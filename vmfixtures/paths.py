"""Where vmfixtures keeps things (XDG base directories, overridable by env)."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def cache_dir() -> Path:
    """Built guest images (kernel, initrd, qcow2 base) and probe results."""
    override = os.environ.get("VMFIXTURES_CACHE_DIR")
    return Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "vmfixtures"


def data_dir() -> Path:
    """Per-installation secrets: the SSH key pair."""
    override = os.environ.get("VMFIXTURES_DATA_DIR")
    return Path(override) if override else _xdg("XDG_DATA_HOME", ".local/share") / "vmfixtures"


def state_dir() -> Path:
    """VM overlays, sockets and console logs: the storage directory."""
    override = os.environ.get("VMFIXTURES_STATE_DIR")
    return Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "vmfixtures"


def images_dir() -> Path:
    return cache_dir() / "images"


def vms_dir() -> Path:
    return state_dir() / "vms"


def daemon_home() -> Path:
    """The daemon's ledger, snapshots and idle pool."""
    return state_dir() / "daemon"


def daemon_socket() -> Path:
    """The daemon's Unix socket ($VMFIXTURES_DAEMON_SOCKET overrides)."""
    override = os.environ.get("VMFIXTURES_DAEMON_SOCKET")
    if override:
        return Path(override)
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"vmfx-{os.getuid()}" / "daemon.sock"
