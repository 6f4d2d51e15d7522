"""The observer: the ledger's account of the world against the world itself.

Checks (each finding has a type, the object, the evidence and a suggested fix):

- ``vm-not-running``     a VM the ledger holds as running has no QEMU process
- ``backend-state``      QEMU runs, but QMP says the guest is not running
- ``orphan-process``     a QEMU of ours (``guest=vmfx-``) that no ledger row owns
- ``disk-missing``       a disk the ledger records is not on disk (a VM's, or a data disk's file)
- ``disk-unrecorded``    a running VM has a data disk plugged in that no record attached to it
- ``orphan-disk``        a disk or stray file in a storage folder that no row owns
- ``mount-missing``      a mount recorded for a VM is not mounted in its guest
- ``tunnel-down``        a tunnel recorded as up whose ssh process is gone
- ``orphan-socket``      a VM socket folder whose VM folder is gone
- ``lease-expired-alive`` a lease has ended but its VM still runs

Operations in flight (a hand-off renames a folder, an unmount drops its
record just after) can look like drift for a moment, so a pass re-checks
twice more over about a second, and reports only what is still wrong.

``fix`` repairs only what is safe: kill orphan processes, remove orphan
files, mark VMs without a process as stopped, drop stale mount records,
destroy VMs of ended leases. It never touches a VM a live lease runs.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .daemon.ledger import Ledger
from . import network
from .files import read_json
from .procs import ProcessId, kill
from .backends import open_backend
from .backends.qemu import QemuBackend, orphan_qemus, orphan_run_dirs, our_relays, stop_run_dir_helpers
from .backends.base import DISK_HOTPLUG
from .disks import FOLDER as DISKS_FOLDER
from .errors import VmfError
from .mounts import SSHFS, Mounts, kill_helpers

RUNNING_STATES = ("leased", "pooled")
CONFIRM_DELAYS = (0.3, 0.7)  # re-checks; drift must survive both (about a second in all)


@dataclass
class Finding:
    """One disagreement between ledger and reality."""

    type: str
    object: str
    evidence: str
    fix: str
    path: str = ""  # the VM folder or file it is about ("" if none): parallel runs each judge their own

    @property
    def key(self) -> tuple[str, str]:
        return self.type, self.object


@dataclass
class Report:
    """One observer pass."""

    number: int
    started_at: float
    seconds: float
    findings: list[Finding]
    fixed: list[str]

    def to_dict(self) -> dict:
        return {"number": self.number, "started_at": self.started_at, "seconds": round(self.seconds, 3),
                "findings": [asdict(f) for f in self.findings], "fixed": self.fixed}


class Observer:
    """Checks one daemon's ledger against processes, files and guests."""

    def __init__(self, ledger: Ledger, home: Path):
        self.ledger = ledger
        self.home = Path(home)
        self.passes = 0

    def storages(self) -> set[str]:
        found = {str(self.home / "pool"), str(self.home / "pool-libvirt")}
        for row in self.ledger.live_vms():
            found.add(row["storage"])
        return found

    def check(self) -> list[Finding]:
        findings: list[Finding] = []
        live_rows = self.ledger.live_vms()
        owned_pids = set()
        for row in live_rows:
            driver = _backend_of(row)
            label = _label(row)
            proc = driver.process(row["name"])
            if proc:
                owned_pids.add(proc.pid)
            if row["state"] in RUNNING_STATES and proc is None:
                info = driver.run_info(row["name"]) or {}
                findings.append(Finding("vm-not-running", label,
                                        f"ledger state {row['state']}, its {driver.name} process pid "
                                        f"{info.get('pid', '?')} is not running",
                                        "mark it stopped (`vmfixtures observe --fix`), then start or destroy it",
                                        _vm_path(row)))
            elif proc is not None and row["state"] in RUNNING_STATES:
                status = driver.hypervisor_state(row["name"])
                if status not in (None, "running"):
                    findings.append(Finding("backend-state", label, f"ledger says {row['state']}, the "
                                            f"{driver.name} backend says {status!r}", "restart the VM, or destroy it",
                                            _vm_path(row)))
            if proc is not None and row["state"] == "leased":
                findings += self._check_mounts(driver, row)
            if proc is not None and row["state"] in RUNNING_STATES and driver.supports(DISK_HOTPLUG):
                findings += self._check_data_disks(driver, row)
            lease = self.ledger.lease(row["lease_id"]) if row["lease_id"] else None
            if lease is not None and lease["state"] == "ended" and proc is not None:
                findings.append(Finding("lease-expired-alive", label,
                                        f"lease {lease['id']} ended ({lease['end_reason']}) but pid {proc.pid} runs",
                                        "destroy the VM (`vmfixtures observe --fix`)", _vm_path(row)))
        for disk in self.ledger.live_disks():
            if Path(disk["path"]).exists():
                continue
            if disk["kind"] == "data":
                vm = self.ledger.vm(disk["vm_id"]) if disk["vm_id"] else None
                findings.append(Finding("disk-missing", disk["path"], f"data disk '{disk['name']}' "
                                        f"({'attached to VM ' + vm['name'] if vm else 'detached'}), recorded "
                                        f"{time.ctime(disk['created_at'])}, is not on disk",
                                        f"its data is gone: `vmfixtures disk detach {disk['name']}` (--fix marks "
                                        "the disk removed in the ledger)", disk["path"]))
                continue
            findings.append(Finding("disk-missing", disk["path"], f"{disk['kind']} disk recorded "
                                    f"{time.ctime(disk['created_at'])} is not on disk",
                                    "destroy the VM that used it, its data is gone (--fix marks the disk "
                                    "removed in the ledger)", disk["path"]))
        storages = self.storages()
        # A VM being created or destroyed may have its process before (or after) its record of it:
        # libvirt starts QEMU inside a restore that takes a second. Its folder's row covers it.
        in_flight = {str((Path(r["storage"]) / r["name"]).resolve()) for r in live_rows
                     if r["state"] in ("creating", "destroying")}
        for proc, cwd in orphan_qemus(storages, owned_pids):
            if str(Path(cwd).resolve()) in in_flight:
                continue
            try:
                command = " ".join(proc.cmdline()[:3])
            except psutil.Error:
                continue  # it ended while we looked: nothing left to report
            findings.append(Finding("orphan-process", f"QEMU pid {proc.pid}",
                                    f"runs in {cwd} with no ledger row: {command}",
                                    "kill it (`vmfixtures observe --fix`)", cwd))
        findings += self._orphan_files(storages, live_rows)
        if any(r["backend"] == "libvirt" for r in live_rows) or (self.home / "pool-libvirt").exists():
            findings += _stray_domains(storages, live_rows)
        for d in orphan_run_dirs():
            vm_dir = _served_vm(d)
            findings.append(Finding("orphan-socket", str(d), f"socket folder of {vm_dir}, "
                                    "which no longer exists", "remove it (`vmfixtures observe --fix`)", vm_dir))
        findings += _stray_network_helpers()
        findings += _stray_agent_relays()
        for tunnel in self.ledger.live_tunnels():
            if not _tunnel_alive(tunnel):
                findings.append(Finding("tunnel-down", f"tunnel {tunnel['id']} {tunnel['kind']} {tunnel['bind']}",
                                        f"recorded up, but its ssh pid {tunnel['pid']} is gone",
                                        "start `vmfixtures portforward` again (--fix marks the tunnel down)",
                                        _vm_path(self.ledger.vm(tunnel["vm_id"]))))
        return findings

    def _check_mounts(self, driver: QemuBackend, row: dict) -> list[Finding]:
        mounts = Mounts(driver, row["name"])
        records = [r for r in mounts.records() if r.state == "mounted"]  # others are in transition
        if not records:
            return []
        try:
            in_guest = mounts.guest_mounts()
        except VmfError:
            return []  # the guest agent is busy with another client; the next pass will look
        return [Finding("mount-missing", f"{row['name']}:{r.target}", f"recorded mount of {r.source} is "
                        f"{'a ' + in_guest[r.target] if r.target in in_guest else 'not'} mounted in the guest",
                        "`vmfixtures umount` then `vmfixtures mount` it again (or --fix drops the record)",
                        _vm_path(row))
                for r in records if in_guest.get(r.target) != SSHFS]

    def _check_data_disks(self, driver, row: dict) -> list[Finding]:
        """Block devices the hypervisor has against the disks the ledger and the VM's record attach."""
        try:
            plugged = driver.block_devices(row["name"])
            recorded = [d.file for d in driver.data_disks(row["name"])]
        except (VmfError, OSError):
            return []  # the VM is going away, or its monitor is busy: the next pass looks again
        recorded += [Path(d["path"]) for d in self.ledger.data_disks(vm_id=row["id"])]
        known = {str(Path(f).resolve()) for f in recorded}
        return [Finding("disk-unrecorded", f"disk {file} in {_label(row)}",
                        f"the {driver.name} backend has it plugged in as {device}; no record attaches it",
                        "find who attached it; stop and start the VM to boot it with its recorded disks only",
                        _vm_path(row))
                for device, file in plugged.items() if str(Path(file).resolve()) not in known]

    def _orphan_files(self, storages: set[str], live_rows: list[dict]) -> list[Finding]:
        owned_dirs = {str(Path(r["storage"]) / r["name"]) for r in live_rows}
        data_disks = {d["path"] for d in self.ledger.data_disks()}
        findings = []
        for storage in storages:
            try:
                entries = list(Path(storage).iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    findings += _orphans_at(entry, storage, owned_dirs, data_disks)
                except FileNotFoundError:
                    continue  # removed while we looked (a destroy in flight): nothing left to own
        return findings

    def run(self, fix: bool = False) -> Report:
        """One pass: check, confirm what is still wrong a moment later, optionally fix it."""
        start = time.time()
        findings = self.check()
        for delay in CONFIRM_DELAYS:
            if not findings:
                break
            time.sleep(delay)  # let operations in flight land before calling it drift
            again = {f.key: f for f in self.check()}
            findings = [again[f.key] for f in findings if f.key in again]
        fixed = self.fix(findings) if fix and findings else []
        self.passes += 1
        self.ledger.event("observe", f"pass {self.passes}", {"findings": len(findings), "fixed": len(fixed)})
        return Report(self.passes, start, time.time() - start, findings, fixed)

    def fix(self, findings: list[Finding]) -> list[str]:
        done = []
        for f in findings:
            if f.type == "orphan-process":
                pid = int(f.object.split()[-1])
                try:
                    psutil.Process(pid).kill()
                    done.append(f"killed orphan QEMU pid {pid}")
                except psutil.Error:
                    pass
            elif f.type == "orphan-disk":
                path = Path(f.object)
                if path.is_dir():
                    kill_helpers(path)
                    from .backends.qemu import clear_run_dir

                    clear_run_dir(path)
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                done.append(f"removed {path}")
            elif f.type == "orphan-socket":
                stop_run_dir_helpers(Path(f.object))
                shutil.rmtree(f.object, ignore_errors=True)
                done.append(f"removed {f.object}")
            elif f.type == "disk-missing":
                self.ledger.remove_disk_path(f.object)
                done.append(f"marked {f.object} removed in the ledger")
            elif f.type == "vm-not-running":
                for row in self.ledger.live_vms():
                    if f.object == _label(row):
                        self.ledger.update_vm(row["id"], state="stopped")
                        self.ledger.end_processes(row["id"])
                        done.append(f"marked {row['name']} stopped")
            elif f.type == "stray-domain":
                from .backends.libvirt import destroy_domain

                if destroy_domain(f.object.split()[-1]):
                    done.append(f"destroyed {f.object}")
            elif f.type in ("stray-network-helper", "stray-agent-relay"):
                kill(ProcessId.of(int(f.object.split()[-1])).process())
                done.append(f"killed {f.object}")
            elif f.type == "stray-firewall":
                network.drop_table(f.object.split()[-1])
                done.append(f"dropped {f.object}")
            elif f.type == "tunnel-down":
                self.ledger.tunnel_down(int(f.object.split()[1]))
                done.append(f"marked {f.object} down")
            elif f.type == "lease-expired-alive":
                for row in self.ledger.live_vms():
                    if f.object == _label(row):
                        _backend_of(row).destroy(row["name"])
                        self.ledger.vm_destroyed(row["id"])
                        done.append(f"destroyed {row['name']} (its lease had ended)")
            elif f.type == "mount-missing":
                vm, target = f.object.split(":", 1)
                for row in self.ledger.live_vms():
                    if row["name"] == vm:
                        rec = Path(row["storage"]) / vm / "mounts"
                        for rec_file in rec.glob("*.json"):
                            if json.loads(rec_file.read_text())["target"] == target:
                                rec_file.unlink()
                                done.append(f"dropped the stale mount record {vm}:{target}")
        return done


HELPER_GRACE = 30.0  # seconds a passt may run before its VM's QEMU shows up


def _orphans_at(entry: Path, storage: str, owned_dirs: set[str], data_disks: set[str]) -> list[Finding]:
    """Findings for one entry of a storage folder: a folder or file no row owns, or unowned data disks."""
    if entry.name == DISKS_FOLDER and entry.is_dir():  # the data disks: each file needs its row
        return [Finding("orphan-disk", str(f), f"data disk file in {entry} that no ledger row owns",
                        "remove it (`vmfixtures observe --fix`)", str(f))
                for f in sorted(entry.glob("*.qcow2")) if str(f) not in data_disks]
    if str(entry) in owned_dirs:
        return []
    disks = [p.name for p in entry.rglob("*.qcow2")] if entry.is_dir() else []
    return [Finding("orphan-disk", str(entry), f"{'folder' if entry.is_dir() else 'file'} in storage {storage} "
                    "that no ledger row owns" + (f" (holds {', '.join(disks)})" if disks else ""),
                    "remove it (`vmfixtures observe --fix`)", str(entry))]


def _outlived_vm(proc: psutil.Process, folder: Path, record: str | None = None) -> str | None:
    """Why helper ``proc`` of the socket folder ``folder`` (passt, an agent relay) outlived its VM, or
    None: it serves a running QEMU, or it is younger than HELPER_GRACE in a folder that exists (a VM
    starting up: the helper comes first, QEMU a moment later). ``record``: a file of the folder the
    helper's VM must have."""
    try:
        started = proc.create_time()
    except psutil.Error:
        return None
    if not folder.is_dir():
        return "which no longer exists"
    if time.time() - started < HELPER_GRACE:
        return None
    if record and read_json(folder / record) is None:
        return f"which has no {record}"
    qemu = ProcessId.from_record(read_json(folder / "run.json"))
    return None if qemu and qemu.process() else "which has no running VM"


def _stray_network_helpers() -> list[Finding]:
    """passt processes whose VM is gone (their socket folder was removed, or no QEMU of ours uses it),
    and firewall tables of filtered VMs whose passt is gone: what a VM killed behind our back leaves."""
    from .backends.qemu import runtime_root

    findings = []
    for proc, folder in network.our_passts(runtime_root()):
        why = _outlived_vm(proc, folder, network.RECORD)
        if why:
            findings.append(Finding("stray-network-helper", f"passt pid {proc.pid}", f"serves {folder}, {why}",
                                    "kill it (`vmfixtures observe --fix`)", _served_vm(folder)))
    # Any process of the table's group counts, not only our passts: another installation's filtered VM
    # (a second state folder on the same host) keeps its table while its passt runs.
    groups = _process_groups() if (tables := network.our_tables()) else set()
    for table in tables:
        if int(table.removeprefix(network.TABLE_PREFIX)) not in groups:
            findings.append(Finding("stray-firewall", f"nftables table {table}",
                                    "of a filtered VM whose passt is gone", "drop it (`vmfixtures observe --fix`)"))
    return findings


def _process_groups() -> set[int]:
    """The real gids of every process on the host."""
    groups = set()
    for proc in psutil.process_iter(["gids"]):
        if proc.info["gids"]:
            groups.add(proc.info["gids"].real)
    return groups


def _stray_agent_relays() -> list[Finding]:
    """Guest agent relays whose VM's QEMU is gone (a relay ends by itself when QEMU closes its socket)."""
    findings = []
    for proc, folder in our_relays():
        why = _outlived_vm(proc, folder)
        if why:
            findings.append(Finding("stray-agent-relay", f"agent relay pid {proc.pid}",
                                    f"holds {folder / 'qga.sock'}, {why}", "kill it (`vmfixtures observe --fix`)",
                                    _served_vm(folder)))
    return findings


def _vm_path(row: dict | None) -> str:
    return str(Path(row["storage"]) / row["name"]) if row else ""


def _served_vm(socket_folder: Path) -> str:
    """The VM folder a helper's socket folder names ('' once that record is gone)."""
    try:
        return (socket_folder / "vm_dir").read_text().strip()
    except OSError:
        return ""


def _label(row: dict) -> str:
    """How a finding names a VM row (and how --fix finds the row again)."""
    return f"VM {row['name']} in {row['storage']}"


def _tunnel_alive(tunnel: dict) -> bool:
    """The tunnel's ssh still runs: same pid *and* start time, so a reused pid does not count."""
    if tunnel.get("pid") is None or tunnel.get("create_time") is None:
        return False
    return ProcessId(tunnel["pid"], tunnel["create_time"]).alive()


def _backend_of(row: dict):
    return open_backend(row.get("backend") or "qemu", Path(row["storage"]), quiet=True)


def _stray_domains(storages: set[str], live_rows: list[dict]) -> list[Finding]:
    """libvirt domains with our prefix that no live VM of the ledger accounts for."""
    from .backends.libvirt import our_domains

    claimed = set()
    for row in live_rows:
        if row["backend"] == "libvirt":
            meta = _backend_of(row)._meta_or_none(row["name"])
            if meta:
                claimed.add(meta["domain"])
    findings = []
    try:
        domains = our_domains()
    except VmfError:
        return findings  # libvirtd unreachable: the VMs' own checks say what that means
    for domain, storage, name in domains:
        if domain in claimed or (storage is not None and storage not in storages):
            continue
        findings.append(Finding("stray-domain", f"libvirt domain {domain}",
                                f"carries the project's prefix (VM {name or '?'} in {storage or '?'}) but no "
                                "live VM of the ledger is it", "destroy it (`vmfixtures observe --fix`)",
                                str(Path(storage) / (name or "")) if storage else ""))
    return findings


def describe(report: dict) -> str:
    """Human lines for a report (CLI)."""
    lines = [f"observer pass {report['number']}: {len(report['findings'])} finding(s) in {report['seconds']}s"]
    for f in report["findings"]:
        lines.append(f"  {f['type']:<20} {f['object']}\n      evidence: {f['evidence']}\n      fix: {f['fix']}")
    for line in report["fixed"]:
        lines.append(f"  fixed: {line}")
    return "\n".join(lines)

