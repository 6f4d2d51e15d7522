"""Independent facts about the host and the guests, for steps to judge a product by.

Nothing here calls a product's code or reads its records to decide whether it
was right: snapshots are folders on disk, processes are rows of the process
table with their start times, YAML is parsed with PyYAML, and a guest is asked
about itself (its boot id, its memory, its mounts) through its own agent.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from ..procs import ProcessId

# A snapshot folder still being written carries one of these marks in its name
# (vmfixtures: "-partial"; rsync-based tools commonly ".partial", ".tmp", ".inprogress").
PARTIAL = re.compile(r"(partial|\.tmp$|-tmp$|inprogress|incomplete)", re.IGNORECASE)


@dataclass(frozen=True)
class FileFact:
    """What identifies a file's content on disk: untouched means all four are equal."""

    inode: int
    size: int
    mtime_ns: int
    mode: int


class Host:
    """The host as an independent witness."""

    # -- files -------------------------------------------------------------
    @staticmethod
    def snapshots(dest: Path) -> list[Path]:
        """Complete snapshots: the visible folders directly under ``dest`` that are not marked
        partial, in name order (products name snapshots by time, so that is their age order)."""
        dest = Path(dest)
        if not dest.is_dir():
            return []
        return sorted(p for p in dest.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and not PARTIAL.search(p.name))

    @staticmethod
    def partial_snapshots(dest: Path) -> list[Path]:
        dest = Path(dest)
        return sorted(p for p in dest.iterdir() if PARTIAL.search(p.name)) if dest.is_dir() else []

    @staticmethod
    def tree(folder: Path) -> dict[str, FileFact]:
        """Every path under ``folder`` with inode, size, mtime and mode (symlinks not followed)."""
        folder = Path(folder)
        if not folder.exists():
            return {}
        facts = {}
        for p in [folder, *folder.rglob("*")]:
            st = p.lstat()
            facts[p.relative_to(folder).as_posix()] = FileFact(st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        return facts

    @staticmethod
    def same_file(a: Path, b: Path) -> bool:
        """One and the same file (a hard link), not merely equal content."""
        sa, sb = os.stat(a), os.stat(b)
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


    @staticmethod
    def mode(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    @staticmethod
    def yaml(path: Path):
        """A YAML file as PyYAML reads it (not through any product's loader)."""
        return yaml.safe_load(Path(path).read_text())

    # -- installed software ------------------------------------------------
    @staticmethod
    def installed_version(distribution: str) -> str:
        """The version of an installed Python distribution, as its package metadata says."""
        from importlib import metadata

        return metadata.version(distribution)

    @staticmethod
    def qemu_version() -> str | None:
        """The first line of ``qemu-system-x86_64 --version``; None when QEMU is not installed."""
        import shutil
        import subprocess

        qemu = shutil.which("qemu-system-x86_64")
        return subprocess.run([qemu, "--version"], check=False, capture_output=True, text=True).stdout.splitlines()[0] \
            if qemu else None

    # -- processes ---------------------------------------------------------
    @staticmethod
    def listeners(port: int) -> list[tuple[str, int | None]]:
        """(address, pid) of every TCP socket listening on ``port``."""
        return [(c.laddr.ip, c.pid) for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port]

    @staticmethod
    def process_age(pid: int) -> float:
        """Seconds since process ``pid`` started, to the clock tick: the host's uptime minus the start
        in /proc/PID/stat. (A start time in seconds since the epoch is off by up to 1 s: the kernel gives
        its boot time in whole seconds.)"""
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def processes_mentioning(path: Path) -> list[psutil.Process]:
        """Processes (other than this one) whose command line names ``path``."""
        needle = str(path)
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if proc.pid != os.getpid() and any(needle in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        return found

    @staticmethod
    def vm_processes(folder: Path) -> list[psutil.Process]:
        """Hypervisor processes (QEMU named ``vmfx-*``) working in ``folder`` or holding a file in it."""
        prefix = str(Path(folder).resolve()) + "/"
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if not any(a.startswith("guest=vmfx-") for a in proc.info["cmdline"] or []):
                continue
            try:
                if (proc.cwd() + "/").startswith(prefix) or any(f.path.startswith(prefix) for f in proc.open_files()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    @classmethod
    def vm_process_id(cls, folder: Path) -> ProcessId:
        """Pid and start time of the one VM process of the VM in ``folder``: a restarted VM differs in either."""
        return ProcessId.of(cls.vm_pid(folder))

    @classmethod
    def vm_open_disks(cls, folder: Path) -> set[Path]:
        """qcow2 files the VM process of the VM in ``folder`` holds open outside that folder (its data
        disks, as the kernel's file table says)."""
        proc = psutil.Process(cls.vm_pid(folder))
        inside = str(Path(folder).resolve()) + "/"
        return {Path(f.path) for f in proc.open_files() if f.path.endswith(".qcow2") and not f.path.startswith(inside)}

    @classmethod
    def vm_pid(cls, folder: Path) -> int:
        """The one VM process of the VM in ``folder``; AssertionError when there is none or several."""
        procs = cls.vm_processes(folder)
        assert len(procs) == 1, f"expected one process for the VM in {folder}, found {[p.pid for p in procs]}"
        return procs[0].pid

    # -- the fixture daemon's ledger, read as a file -----------------------------
    @staticmethod
    def ledger_vms(path: Path) -> list[dict]:
        """Live VM rows of a ledger, read with sqlite3 in read-only mode (not through the daemon)."""
        import sqlite3

        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT storage, name, state FROM vms WHERE state != 'destroyed'").fetchall()
        finally:
            db.close()
        return [{"storage": s, "name": n, "state": st} for s, n, st in rows]

    @classmethod
    def lasting_ledger_disagreements(cls, path: Path, settle: float = 1.0, storages=()) -> list[str]:
        """``ledger_disagreements`` seen in two readings ``settle`` seconds apart. The daemon keeps
        refilling its pool: a VM it places or removes between one reading of the ledger and the scan
        of the process table that follows is in transit, not in disagreement; a real one lasts.
        ``storages``: folders to scan for VM processes besides those of the live rows."""
        first = set(cls.ledger_disagreements(cls.ledger_vms(path), storages))
        if not first:
            return []
        time.sleep(settle)
        return sorted(first & set(cls.ledger_disagreements(cls.ledger_vms(path), storages)))

    @classmethod
    def ledger_disagreements(cls, rows: list[dict], storages=()) -> list[str]:
        """What the process table and the disks say against the ledger rows (and VM processes in
        ``storages`` that no row holds: rows all marked destroyed would otherwise leave none to scan)."""
        found = []
        held = set()  # pids of the VM processes the rows account for
        for row in rows:
            folder = Path(row["storage"]) / row["name"]
            running = cls.vm_processes(folder)
            held |= {p.pid for p in running}
            if row["state"] in ("leased", "pooled") and not running:
                found.append(f"{folder}: ledger says {row['state']}, no VM process holds it")
            if row["state"] in ("leased", "pooled") and not (folder / "disk.qcow2").exists():
                found.append(f"{folder}: ledger says {row['state']}, its disk is missing")
        for storage in {r["storage"] for r in rows} | {str(s) for s in storages}:
            for proc in cls.vm_processes(Path(storage)):
                if proc.pid not in held:
                    found.append(f"pid {proc.pid} runs a VM under {storage} that no ledger row holds")
        return found

    # -- guests --------------------------------------------------------------
    @staticmethod
    def guest_mounts(machine) -> dict[str, str]:
        """Mount point -> file-system type, as the guest's own /proc/mounts says."""
        found = {}
        for line in machine.read_file("/proc/mounts").decode().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                found[fields[1].replace("\\040", " ")] = fields[2]
        return found

    @staticmethod
    def guest_block_devices(machine) -> dict[str, int]:
        """Block device -> size in bytes, as the guest kernel lists them in its own /sys/block."""
        out = machine.succeed('for d in /sys/block/*; do echo "${d##*/} $(cat "$d/size")"; done')
        return {name: int(sectors) * 512 for name, sectors in (line.split() for line in out.splitlines() if line.strip())}

    @staticmethod
    def guest_resources(machine) -> dict[str, int]:
        """CPUs and memory as the guest kernel sees them."""
        cpus = int(machine.succeed(["nproc"]).strip())
        meminfo = machine.read_file("/proc/meminfo").decode()
        total_kib = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1))
        return {"cpus": cpus, "memory_kib": total_kib}

    @staticmethod
    def guest_addresses(machine) -> list[str]:
        """The guest's IPv4 addresses (``address/prefix``, loopback left out), as its own `ip` lists them."""
        out = machine.succeed(["ip", "-4", "-o", "addr", "show"])
        return [f.split()[3] for f in out.splitlines() if len(f.split()) > 3 and f.split()[1] != "lo"]

    @staticmethod
    def guest_connect_all(machine, targets: list[tuple[str, int]], timeout: float = 3.0) -> dict[str, str]:
        """Open a TCP connection to every (address, port) at once from inside the guest (one process of
        its own python3, as root: the attempt an agent in the guest would make); ``"address:port"`` ->
        the first line the other end sent, or ``error: ...``."""
        import json

        probe = ("import json,socket,sys,threading\n"
                 "out={}\n"
                 "def one(h,p):\n"
                 " s=socket.socket(); s.settimeout(float(sys.argv[2]))\n"
                 " try:\n  s.connect((h,p)); out[f'{h}:{p}']=s.recv(200).decode(errors='replace').strip()\n"
                 " except Exception as e:\n  out[f'{h}:{p}']=f'error: {e}'\n"
                 "ts=[threading.Thread(target=one,args=t) for t in json.loads(sys.argv[1])]\n"
                 "[t.start() for t in ts]; [t.join() for t in ts]\n"
                 "print(json.dumps(out))\n")
        r = machine.execute(["python3", "-c", probe, json.dumps(targets), str(timeout)], timeout=timeout + 30)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {f"{a}:{p}": f"error: probe exited {r.exit_code}: {r.stderr.strip()[:200]}" for a, p in targets}


    # -- file content on each side, and what a process took -------------------------
    @staticmethod
    def sha256(path: Path) -> str:
        """The SHA-256 of a host file, computed here with hashlib (read in 1 MiB pieces)."""
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1024**2):
                h.update(block)
        return h.hexdigest()

    @staticmethod
    def guest_sha256(machine, path: str) -> str:
        """The SHA-256 of a guest file, computed in the guest by its own sha256sum."""
        return machine.succeed(["sha256sum", "--", path], timeout=300).split()[0]

    @staticmethod
    def guest_stat(machine, path: str) -> dict | None:
        """Mode, owner and size of a guest path as the guest's stat(1) says; None when it does not exist."""
        r = machine.execute(["stat", "-c", "%a %U %s", "--", path])
        if not r.ok:
            return None
        mode, owner, size = r.stdout.split()
        return {"mode": int(mode, 8), "owner": owner, "size": int(size)}

    @staticmethod
    def guest_find(machine, folder: str, pattern: str) -> list[str]:
        """Paths under guest ``folder`` whose name matches the shell ``pattern`` (hidden ones too)."""
        out = machine.succeed(["find", folder, "-name", pattern])
        return [line for line in out.splitlines() if line]

    @staticmethod
    def peak_memory(proc, every: float = 0.01) -> int:
        """The peak resident memory (bytes) of running process ``proc`` until it exits: the kernel's
        high-water mark (VmHWM), read until the process is gone or a zombie. ``proc`` is not reaped."""
        import time

        peak = 0
        while True:
            try:
                peak = max(peak, Host.peak_memory_now(proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                return peak
            time.sleep(every)

    # -- what an untrusted guest could reach or cost -------------------------------
    @staticmethod
    def process_tree(pid: int) -> list[int]:
        """``pid`` and all its descendants (those still running)."""
        try:
            proc = psutil.Process(pid)
            return [pid, *(c.pid for c in proc.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def tcp_listeners(pids) -> list[tuple[str, int, int]]:
        """(address, port, pid) of each TCP socket listening in one of ``pids``: where those processes
        accept connections from."""
        wanted = set(pids)
        return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("tcp")
                if c.pid in wanted and c.laddr and c.status == psutil.CONN_LISTEN]

    @staticmethod
    def private_folder(path: Path) -> bool:
        """A real folder of this user that group and others cannot enter."""
        st = os.lstat(path)
        return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077

    @staticmethod
    def qcow2_size(path: Path) -> int:
        """The virtual size a qcow2 file declares (its header, bytes 24-31, big-endian): the most a guest
        can address on it."""
        with open(path, "rb") as f:
            header = f.read(32)
        assert header[:4] == b"QFI\xfb", f"{path} is not a qcow2 file"
        return int.from_bytes(header[24:32], "big")

    # -- disk backup checkpoints, as the hypervisor keeps them ----------------------------
    @classmethod
    def checkpoints(cls, folder: Path) -> list[str]:
        """The backup checkpoints of the VM running in ``folder``, sorted, as its hypervisor lists them:
        libvirt's checkpoint list of the domain the VM process belongs to (libvirt-python), or, for a
        QEMU outside libvirt, the persistent dirty bitmaps of its block nodes, asked over its QMP socket."""
        proc = psutil.Process(cls.vm_pid(folder))
        guest = next(a for a in proc.cmdline() if a.startswith("guest="))
        domain = guest.removeprefix("guest=").split(",")[0]
        names = _libvirt_checkpoints(domain)
        return sorted(names) if names is not None else sorted(_qmp_bitmaps(proc))

    @staticmethod
    def allocated(path: Path) -> int:
        """Bytes a file occupies on the host's disk (allocated blocks, not its apparent size)."""
        return os.stat(path).st_blocks * 512

    @staticmethod
    def reset_peak_memory(pid: int) -> None:
        """Start a new high-water mark of ``pid``'s resident memory (the kernel's clear_refs 5)."""
        Path(f"/proc/{pid}/clear_refs").write_text("5")

    @staticmethod
    def peak_memory_now(pid: int) -> int:
        """The high-water mark (bytes) of ``pid``'s resident memory since start or the last reset;
        ProcessLookupError once it has exited (a zombie has no memory left to report)."""
        m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        if not m:
            raise ProcessLookupError(f"pid {pid} has exited")
        return int(m.group(1)) * 1024

    @staticmethod
    def cpu_seconds(pids) -> float:
        """User and system CPU time the processes ``pids`` have used, all their threads together."""
        total = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


def _libvirt_checkpoints(domain: str) -> list[str] | None:
    """Names of the checkpoints libvirt lists for ``domain``; None when libvirt has no such domain."""
    try:
        import libvirt
    except ImportError:
        return None
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open(os.environ.get("VMFIXTURES_LIBVIRT_URI") or "qemu:///system")
    except libvirt.libvirtError:
        return None
    try:
        return [c.getName() for c in conn.lookupByName(domain).listAllCheckpoints(0)]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def _qmp_bitmaps(proc: psutil.Process, timeout: float = 30.0) -> list[str]:
    """Persistent dirty bitmaps of every block node of a QEMU, over the QMP socket it listens on
    (a plain JSON exchange, not the backend's client)."""
    import json
    import socket

    paths = [c.laddr for c in proc.net_connections(kind="unix") if str(c.laddr).endswith("qmp.sock")]
    assert paths, f"QEMU pid {proc.pid} listens on no QMP socket"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(paths[0])
        f = s.makefile("rw")

        def ask(command):
            f.write(json.dumps({"execute": command}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    return reply

        json.loads(f.readline())  # the greeting
        ask("qmp_capabilities")
        nodes = ask("query-named-block-nodes").get("return", [])
    return sorted({b["name"] for n in nodes for b in n.get("dirty-bitmaps", []) if b.get("persistent")})
