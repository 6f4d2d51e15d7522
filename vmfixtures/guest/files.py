"""Copying files between the host and a guest (``vmfixtures cp``), streamed and all-or-nothing.

The channel is SFTP over the VM's SSH forward, not the guest agent's
guest-file-write: measured here under TCG (bench/transfer.py), the agent
writes ~3 MB/s (every chunk is base64 in a JSON line that qemu-ga parses
in emulated code) and reads ~14 MB/s, SFTP writes ~13 and reads ~18 MB/s
with 16 requests of 64 KiB in flight. Both stream; both exist on the qemu and
libvirt backends (libvirt forwards the SSH port too, and serialises the agent
behind its own API).

A copy lands under a hidden temporary name beside its target, created
readable by its owner only, gets the source's mode (and, in the guest, the
user's ownership) and is then renamed over the target: an interrupted or
refused copy never leaves a half-written file under the target's name.
"""

from __future__ import annotations

import os
import posixpath
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from ..errors import ConfigError, NotFound, PermissionDenied, VmfError
from ..spec import NAME_RE
from .commands import account

TMP_MODE = 0o600
# At most BLOCK * IN_FLIGHT bytes of a file are in memory at a time, whatever its size.
BLOCK, IN_FLIGHT = 64 * 1024, 16


@dataclass(frozen=True)
class Location:
    """One side of a copy: a host path (``vm`` None) or ``VM:/path`` in a guest."""

    vm: str | None
    path: str

    def __str__(self) -> str:
        return f"{self.vm}:{self.path}" if self.vm else self.path


def parse_location(text: str) -> Location:
    """``NAME:/path`` names a guest path (as in ``docker cp``); anything else is a host path.
    A host path whose first part looks like a VM name followed by ':' is written ``./name:...``."""
    if not text:
        raise ConfigError("cp: a path is empty")
    head, sep, tail = text.partition(":")
    if sep and "/" not in head and NAME_RE.match(head):
        if not tail.startswith("/"):
            raise ConfigError(f"cp: {text!r}: the guest path must be absolute (e.g. {head}:/root/file); "
                              f"a host path with ':' is written ./{text}")
        return Location(head, tail)
    return Location(None, text)


def parse_pair(src: str, dst: str) -> tuple[Location, Location]:
    """Source and destination; exactly one of them must be in a VM."""
    a, b = parse_location(src), parse_location(dst)
    if a.vm and b.vm:
        raise ConfigError(f"cp: {src} and {dst} are both in VMs; copy through the host (one side must be a host path)")
    if not a.vm and not b.vm:
        raise ConfigError(f"cp: neither {src} nor {dst} names a VM (write VM:/path for the guest side)")
    return a, b


def _tmp_name(final: str) -> str:
    return posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.vmfx-{os.getpid()}.tmp")


def host_source(src: Path) -> os.stat_result:
    """The stat of host file ``src`` to copy; NotFound, ConfigError (a folder) or PermissionDenied."""
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise NotFound(f"the host has no file {Path(src).absolute()}") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {src} on the host: permission denied") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cp: {src} is a folder; cp copies one file (mount a folder instead: vmfixtures addmount)")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"cp: {src} is not a regular file")
    if not os.access(src, os.R_OK):
        raise PermissionDenied(f"cannot read {src} on the host: permission denied")
    return st


def _host_target(dst: str, name: str) -> Path:
    """Where a file called ``name`` lands for host destination ``dst`` (an existing folder, or a
    file name in one); NotFound naming the folder that does not exist."""
    path = Path(dst)
    if path.is_dir():
        path = path / name
    elif dst.endswith("/") or not path.parent.is_dir():
        folder = path if dst.endswith("/") else path.parent
        raise NotFound(f"the host has no folder {folder.absolute()} (to copy into)")
    if path.is_dir():
        raise ConfigError(f"cp: {path} is a folder; name the file to write")
    return path


def upload(machine, src: Path, dst: str, user: str = "root", timeout: float = 3600.0) -> tuple[str, int]:
    """Copy host file ``src`` to ``dst`` in the guest of ``machine``, with its mode, owned by ``user``.
    Returns the guest path written and its size."""
    st = host_source(src)
    mode = stat.S_IMODE(st.st_mode)
    owner = account(machine, user) if user != "root" else None
    vm = machine.name

    async def resolve(sftp: asyncssh.SFTPClient) -> str:
        if await sftp.isdir(dst):
            final = posixpath.join(dst, Path(src).name)
        else:
            folder = dst.rstrip("/") if dst.endswith("/") else (posixpath.dirname(dst) or "/")
            if dst.endswith("/") or not await sftp.isdir(folder):
                raise NotFound(f"VM '{vm}' has no folder {folder} (to copy into)")
            final = dst
        if await sftp.isdir(final):
            raise ConfigError(f"cp: {vm}:{final} is a folder; name the file to write")
        return final

    async def transfer(sftp: asyncssh.SFTPClient) -> None:
        tmp = _tmp_name(final)
        try:
            async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=TMP_MODE)):
                pass  # created private; put() truncates it and keeps that mode
            await sftp.put(str(src), tmp, block_size=BLOCK, max_requests=IN_FLIGHT)
            await sftp.chmod(tmp, mode)
            if owner:
                await sftp.chown(tmp, *owner)
            await sftp.posix_rename(tmp, final)
        except BaseException:
            try:
                await sftp.remove(tmp)
            except (asyncssh.SFTPError, OSError):
                pass  # never created, or already renamed
            raise

    with _sftp_errors(vm, f"copying {src} to {dst}"):
        final = machine.ssh.sftp(resolve, timeout)
        if owner:  # SFTP writes as root: the user must be allowed to write there
            _check_as(machine, user, ["-w", posixpath.dirname(final) or "/"], f"write in {posixpath.dirname(final)}")
        machine.ssh.sftp(transfer, timeout)
    return final, st.st_size


def download(machine, src: str, dst: str, user: str = "root", timeout: float = 3600.0) -> tuple[Path, int]:
    """Copy guest file ``src`` of ``machine`` to ``dst`` on the host, with its mode. Returns the
    host path written and its size."""
    vm = machine.name
    if user != "root":
        account(machine, user)

    async def resolve(sftp: asyncssh.SFTPClient) -> asyncssh.SFTPAttrs:
        try:
            attrs = await sftp.stat(src)
        except asyncssh.SFTPNoSuchFile:
            raise NotFound(f"VM '{vm}' has no file {src}") from None
        if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise ConfigError(f"cp: {vm}:{src} is a folder; cp copies one file")
        if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
            raise ConfigError(f"cp: {vm}:{src} is not a regular file")
        return attrs

    async def transfer(sftp: asyncssh.SFTPClient) -> None:
        tmp = Path(_tmp_name(str(final)))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TMP_MODE))
            await sftp.get(src, str(tmp), block_size=BLOCK, max_requests=IN_FLIGHT)
            os.chmod(tmp, stat.S_IMODE(attrs.permissions))
            os.replace(tmp, final)
        except PermissionError:
            raise PermissionDenied(f"cannot write in {final.parent} on the host: permission denied") from None
        finally:
            tmp.unlink(missing_ok=True)

    with _sftp_errors(vm, f"copying {src} to {dst}"):
        attrs = machine.ssh.sftp(resolve, timeout)
        if user != "root":
            _check_as(machine, user, ["-r", src], f"read {src}")
        final = _host_target(dst, posixpath.basename(src))
        machine.ssh.sftp(transfer, timeout)
    return final, attrs.size


@contextmanager
def _sftp_errors(vm: str, what: str):
    """SFTP's own errors as one line naming the VM and the copy."""
    try:
        yield
    except asyncssh.SFTPPermissionDenied as exc:
        raise PermissionDenied(f"VM '{vm}': {what}: permission denied ({exc.reason})") from None
    except asyncssh.SFTPError as exc:
        raise VmfError(f"VM '{vm}': {what} failed: {exc.reason}") from None


def _check_as(machine, user: str, test: list[str], what: str) -> None:
    r = machine.execute(["/usr/sbin/runuser", "-u", user, "--", "test", *test], timeout=30)
    if not r.ok:
        raise PermissionDenied(f"VM '{machine.name}': guest user '{user}' may not {what}")
