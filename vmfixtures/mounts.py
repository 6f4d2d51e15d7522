"""Host folders inside a running VM: sshfs in the guest, fed by an SFTP server on the host.

The guest runs ``sshfs -o slave`` over an SSH session; its stdio is joined
(through a socketpair) to the host's ``sftp-server``. No extra VM device and
no guest-to-host network are needed, mounts can come and go at run time, and
they work on VMs restored from memory snapshots (9p can do neither).

The SFTP server runs as the host user, so files the guest creates belong to
that user; it runs under bubblewrap with only the mounted folder writable
and no network, so the guest cannot reach other host files through it.

Each mount is recorded in ``<vm>/mounts/<key>.json`` (pids and start times of
the two helper processes); helpers run with that folder as their working
directory, so a sweep can attribute them to their VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .errors import ConfigError, GuestError, MissingDependency, Timeout, VmfError
from .files import write_atomically
from .procs import live_process, wait_exit

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSHFS = "fuse.sshfs"  # the file system type our mounts show in the guest's /proc/mounts


@dataclass
class MountRecord:
    """A live mount and the host processes that carry it."""

    source: str
    target: str
    ssh_pid: int
    ssh_start: float
    sftp_pid: int
    sftp_start: float
    started_at: float
    state: str = "mounting"  # mounting -> mounted -> unmounting: recorded before each step is taken


def _key(target: str) -> str:
    return hashlib.sha256(target.encode()).hexdigest()[:12]


def _kill_group(pid: int, start: float) -> bool:
    """SIGKILL the helper's process group (bwrap runs the SFTP server as its child)."""
    if live_process(pid, start) is None:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)  # helpers are session leaders: pgid == pid
    except ProcessLookupError:
        return False
    return True


def kill_helpers(vm_dir: Path) -> list[int]:
    """Kill every mount helper recorded for the VM (it is being stopped or destroyed)."""
    killed = []
    for rec_file in (vm_dir / "mounts").glob("*.json"):
        rec = MountRecord(**json.loads(rec_file.read_text()))
        for pid, start in ((rec.ssh_pid, rec.ssh_start), (rec.sftp_pid, rec.sftp_start)):
            if _kill_group(pid, start):
                wait_exit(pid, 5.0)
                killed.append(pid)
        rec_file.unlink()
    return killed


def helper_processes(storage: Path) -> list[psutil.Process]:
    """Mount helpers whose working folder lies under ``storage`` (leak checks)."""
    found = []
    for proc in psutil.process_iter(["cwd", "name"]):
        cwd = str(proc.info.get("cwd") or "")
        if cwd.startswith(str(storage)) and "/mounts" in cwd and proc.info["name"] != "qemu-system-x86":
            found.append(proc)
    return found


class Mounts:
    """The mounts of one running VM."""

    def __init__(self, driver, name: str):
        self.driver = driver
        self.name = name
        self.folder = driver.vm_dir(name) / "mounts"

    def records(self) -> list[MountRecord]:
        if not self.folder.is_dir():
            return []
        return [MountRecord(**json.loads(p.read_text())) for p in sorted(self.folder.glob("*.json"))]

    def record(self, target: str) -> MountRecord | None:
        path = self.folder / f"{_key(target)}.json"
        return MountRecord(**json.loads(path.read_text())) if path.is_file() else None

    def guest_mounts(self) -> dict[str, str]:
        """Mount point -> file system type, as the guest kernel sees them."""
        text = self.driver.machine(self.name).read_file("/proc/mounts").decode()
        return {line.split()[1]: line.split()[2] for line in text.splitlines() if len(line.split()) > 2}

    def mount(self, source: Path, target: str) -> MountRecord:
        """Mount host folder ``source`` at guest path ``target``; wait until the guest sees it."""
        source = Path(source)
        if not source.is_dir():
            raise ConfigError(f"mount source {source} does not exist or is not a folder")
        for tool in (SFTP_SERVER, shutil.which("bwrap") or "bwrap", shutil.which("ssh") or "ssh"):
            if not os.path.exists(tool):
                raise MissingDependency(f"'{tool}' not found: install openssh-sftp-server, bubblewrap and openssh-client")
        m = self.driver.machine(self.name)  # GuestError if the VM is not running
        existing = self.record(target)
        if existing:
            raise ConfigError(f"guest path {target} in VM '{self.name}' is already in use by the mount of "
                              f"{existing.source}")
        if target in self.guest_mounts():
            raise ConfigError(f"guest path {target} in VM '{self.name}' is already a mount point in the guest")
        m.succeed(["mkdir", "-p", target])
        self.folder.mkdir(exist_ok=True)
        log = open(self.folder / f"{_key(target)}.log", "ab")
        ours, theirs = socket.socketpair()
        try:
            sftp = subprocess.Popen(self._sftp_command(source), stdin=ours, stdout=ours, stderr=log,
                                    cwd=self.folder, start_new_session=True)
            ssh = subprocess.Popen(self._ssh_command(m, source, target), stdin=theirs, stdout=theirs, stderr=log,
                                   cwd=self.folder, start_new_session=True)
        finally:
            ours.close()
            theirs.close()
            log.close()
        rec = MountRecord(str(source), target, ssh.pid, psutil.Process(ssh.pid).create_time(),
                          sftp.pid, psutil.Process(sftp.pid).create_time(), time.time())
        self._save(rec)  # recorded before we wait
        try:
            self._wait_mounted(target, ssh)
        except VmfError:
            self._stop_helpers(rec)
            raise
        rec.state = "mounted"
        self._save(rec)
        return rec

    def _save(self, rec: MountRecord) -> None:
        write_atomically(self.folder / f"{_key(rec.target)}.json", json.dumps(asdict(rec)))

    def _sftp_command(self, source: Path) -> list[str]:
        """The SFTP server, confined: root in the guest can replace sshfs and send it any request
        (the parent folder, absolute paths, links), so the server itself must see nothing else.

        It sees the mounted folder (writable) and, read-only, the host's system software (/usr and
        the /lib, /bin links it needs to run) and a passwd/group naming only the host user. No /proc
        (the server's environment and command line stay unreadable), no other /etc, no home, no
        network, an empty environment; everything else is a read-only empty tmpfs, so the guest
        cannot even store files in the sandbox (that would be host memory)."""
        cmd = ["bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", str(self._identity("passwd")), "/etc/passwd",
               "--ro-bind", str(self._identity("group")), "/etc/group", "--dev", "/dev"]
        for link in ("lib", "lib64", "bin", "sbin"):
            if Path(f"/{link}").is_symlink():
                cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
            elif Path(f"/{link}").is_dir():
                cmd += ["--ro-bind", f"/{link}", f"/{link}"]
        # (No --new-session: the server must stay in the helper's process group, which is killed as one.)
        return cmd + ["--bind", str(source), str(source), "--remount-ro", "/", "--unshare-all", "--clearenv",
                      SFTP_SERVER, "-e", "-d", str(source)]

    def _identity(self, kind: str) -> Path:
        """A passwd or group file naming only the host user (the SFTP server looks itself up by uid)."""
        import grp
        import pwd

        if kind == "passwd":
            pw = pwd.getpwuid(os.getuid())
            line = f"{pw.pw_name}:x:{pw.pw_uid}:{pw.pw_gid}::{pw.pw_dir}:/bin/false\n"
        else:
            gid = os.getgid()
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
            line = f"{name}:x:{gid}:\n"
        path = self.folder / kind
        write_atomically(path, line, 0o644)
        return path

    def _ssh_command(self, m, source: Path, target: str) -> list[str]:
        remote = f"exec sshfs -f -o slave :{shlex.quote(str(source))} {shlex.quote(target)}"
        return ["ssh", "-T", "-i", str(m.ssh.key_path), "-p", str(m.ssh_port),
                "-o", f"UserKnownHostsFile={self.driver.known_hosts(self.name)}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", remote]

    def _wait_mounted(self, target: str, ssh: subprocess.Popen) -> None:
        # FUSE offers the host no event for "mounted"; /proc/mounts via the agent is a ~3 ms read.
        deadline = time.monotonic() + self.driver.accel().scale(30)
        delay = 0.02
        while self.guest_mounts().get(target) != SSHFS:
            if ssh.poll() is not None:
                log = (self.folder / f"{_key(target)}.log").read_text(errors="replace").strip()
                raise GuestError(f"mounting {target} in VM '{self.name}' failed: sshfs exited {ssh.returncode}: "
                                 f"{log[-400:] or 'no output'}")
            if time.monotonic() > deadline:
                raise Timeout(f"{target} did not appear as a mount in VM '{self.name}'")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def umount(self, target: str) -> MountRecord:
        """Unmount in the guest first; only then stop the helpers and drop the record."""
        rec = self.record(target)
        if rec is None:
            raise ConfigError(f"nothing is mounted at {target} in VM '{self.name}' by vmfixtures")
        m = self.driver.machine(self.name)
        rec.state = "unmounting"
        self._save(rec)
        if self.guest_mounts().get(target) == SSHFS:
            r = m.execute(["fusermount3", "-u", target])
            if not r.ok:
                rec.state = "mounted"
                self._save(rec)
                raise GuestError(f"unmounting {target} in VM '{self.name}' failed: {r.stderr.strip() or r.stdout.strip()}")
        self._stop_helpers(rec)
        return rec

    def _stop_helpers(self, rec: MountRecord) -> None:
        for pid, start in ((rec.ssh_pid, rec.ssh_start), (rec.sftp_pid, rec.sftp_start)):
            if live_process(pid, start) and not wait_exit(pid, 5.0):  # both end on their own once sshfs exits
                _kill_group(pid, start)
                wait_exit(pid, 5.0)
        for suffix in (".json", ".log"):
            (self.folder / f"{_key(rec.target)}{suffix}").unlink(missing_ok=True)
