"""Where vmfixtures keeps things (XDG base directories, overridable by env)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import PermissionDenied


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
    return runtime_dir() / "daemon.sock"


def runtime_dir() -> Path:
    """This user's short folder for sockets (the daemon's, VMs'): $XDG_RUNTIME_DIR or /tmp, then vmfx-<uid>.
    Unix socket paths are limited to 107 bytes, hence not under the state folder."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"vmfx-{os.getuid()}"


def private_dir(path: Path, what: str = "vmfixtures' files") -> Path:
    """``path`` as a folder only this user can enter: created 0700 (parents as needed), or, when it
    exists, checked the way OpenSSH checks ~/.ssh: a real folder (no symlink), owned by this user,
    with no access for group or others. Anything else is refused (PermissionDenied, one line): a
    folder another local user made or can write could let them stand in for the daemon or a VM.

    ``mkdir`` either creates the folder with our owner and mode, or fails because something is
    there, which is then checked with ``lstat``: no window in which a folder is trusted unchecked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    check_private(path, what)
    return path


def check_private(path: Path, what: str = "vmfixtures' files") -> None:
    """Refuse (PermissionDenied) unless ``path`` is a folder of this user with mode 0700 or stricter."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PermissionDenied(f"{path} (which holds {what}) does not exist") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"refusing to use {path} for {what}: it is a symlink or not a folder; remove it")
    if st.st_uid != os.geteuid():
        raise PermissionDenied(f"refusing to use {path} for {what}: it belongs to uid {st.st_uid}, not to you "
                               f"(uid {os.geteuid()}); remove it")
    if st.st_mode & 0o077:
        raise PermissionDenied(f"refusing to use {path} for {what}: group or others have access (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); `chmod 700 {path}` if it is yours")
