"""The default backend: QEMU started directly, driven over QMP. No libvirtd.

A VM is a folder ``<storage>/<name>/``::

    vm.json       the spec it was created with, and its owner (if any)
    disk.qcow2    overlay on the image's base disk
    console.log   every boot's serial output (kept until destroy)
    qemu.log      QEMU's own stderr
    run/          only while running: run.json (pid, start time, ssh port,
                  accelerator) and the qmp/qga/console sockets

The sockets are bound by us and handed to QEMU as listening file
descriptors, so they exist before QEMU does and connecting never races its
start-up. Every QEMU gets ``-name guest=vmfx-<name>`` so a sweep can tell
ours from anyone else's.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from qemu.qmp import ExecInterruptedError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from .. import keys, paths
from ..capabilities import require_arch
from ..guest.agent import AGENT_RELAY_SOCKET, TRANSCRIPT, RefusedCommand
from ..errors import (
    GuestError,
    Mismatch,
    MissingDependency,
    NotFound,
    Timeout,
    VmfError,
)
from ..files import read_json, write_atomically
from .. import network
from ..network import Network
from ..images import Image, Recipe, build, find
from ..machine import Machine
from ..mounts import kill_helpers
from ..procs import (
    CHILDREN,
    ProcessId,
    die_with_parent,
    kill,
    live_process,
    no_huge_pages_for_children,
    owner_record,
    process_alive,
    wait_exit,
)
from ..progress import Progress
from ..spec import VMSpec, check_name
from . import accel as accel_mod
from .base import (
    DIRTY_BITMAPS,
    DISK_HOTPLUG,
    MEMORY_SNAPSHOTS,
    NETWORK_PROFILES,
    TEMPLATES,
    Backend,
    CreateResult,
    DataDisk,
    DestroyProof,
    StopResult,
    VMState,
)

PREFIX = "vmfx-"
QEMU = "qemu-system-x86_64"
READY_LINE = r"vmfixtures: ready"
SOCKETS = ("qmp", "qga", "console")
PORT_ATTEMPTS = 3  # launches of a VM whose SSH port was taken before passt could bind it
RELAY = Path(__file__).resolve().parent.parent / "guest" / "relay.py"
FRESHEN_HELPER = Path(__file__).resolve().parent.parent / "guest" / "freshen.pl"
RESUMES = "resumes"  # snapshot.json: saved without the run state (see _load_memory)
NO_RUN_STATE = "migration.store-global-state=off"
FRESHEN_PORT = "org.vmfixtures.freshen.0"  # the virtio-serial port the helper waits on (see freshen.pl)
FRESHEN_PIPE = "freshen"  # run/freshen.in and run/freshen.out: the host's end of that port
FRESHEN_READY = "/run/vmfixtures/freshen.ready"  # the helper has opened its port
FRESHEN_FAILED = "/run/vmfixtures/freshen.failed"  # it could not (what it said)
DATA_BUS, DATA_BUS_SLOT = "vmfx-data", 0x1E  # the PCI bridge data disks are plugged into, and its slot


@dataclass
class Boot:
    """A QEMU that was launched and is on its way to the ready line."""

    proc: subprocess.Popen
    info: dict
    console_offset: int
    progress: Progress
    vm_dir: Path
    log_offset: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def abandon(self, exc: BaseException, what: str) -> BaseException:
        """Kill the half-booted QEMU, drop its sockets, and return ``exc`` reworded to say
        what QEMU itself complained about when it exited on its own (a bad disk, say)."""
        exited = self.proc.poll()
        if exited is None and isinstance(exc, OSError):
            try:  # a socket reset: QEMU is on its way out; let it finish saying why
                exited = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        kill(psutil.Process(self.proc.pid) if exited is None else None)
        clear_run_dir(self.vm_dir)
        # A socket of a QEMU that just exited resets (OSError): that is QEMU's failure, told below.
        if not isinstance(exc, (VmfError, OSError)):
            return exc
        detail = str(exc)
        if exited is not None:
            with open(self.vm_dir / "qemu.log", "rb") as log:
                log.seek(self.log_offset)
                said = log.read().decode(errors="replace").strip().splitlines()[-3:]
            detail = f"QEMU exited with code {exited}: {' / '.join(said) or '(nothing in its log)'}"
        kind = type(exc) if isinstance(exc, VmfError) else GuestError
        return kind(f"{what}: {detail}\n  console log: {self.vm_dir / 'console.log'}\n"
                    f"  qemu log: {self.vm_dir / 'qemu.log'}")



class QemuBackend(Backend):
    """Create, start, stop, restart and destroy VMs as plain QEMU processes."""

    name = "qemu"
    MEMORY_FILE = "mem.state"  # a QEMU migration stream
    RAM_FILE = "ram.mem"  # a template's guest RAM (memory-backend-file); its clones map it copy-on-write
    capabilities = frozenset({MEMORY_SNAPSHOTS, DIRTY_BITMAPS, DISK_HOTPLUG, NETWORK_PROFILES, TEMPLATES})

    def __init__(self, storage: Path | None = None, recipe: Recipe | None = None, quiet: bool = False):
        self.storage = Path(storage) if storage else paths.vms_dir()
        self.recipe = recipe or Recipe()
        self.quiet = quiet
        self._image: Image | None = None
        self._accel: accel_mod.Accel | None = None
        # One Machine per running QEMU: the guest agent serves one client at a time.
        self._machines: dict[str, tuple[int, Machine]] = {}

    # -- lookups ---------------------------------------------------------
    def vm_dir(self, name: str) -> Path:
        return self.storage / name

    def names(self) -> list[str]:
        if not self.storage.is_dir():
            return []
        return sorted(d.name for d in self.storage.iterdir() if (d / "vm.json").is_file())

    def _meta(self, name: str) -> dict:
        path = self.vm_dir(name) / "vm.json"
        if not path.is_file():
            raise NotFound(f"no VM named '{name}' in {self.storage} (see `vmfixtures vm list`)")
        return json.loads(path.read_text())

    def _meta_or_none(self, name: str) -> dict | None:
        """The VM's record, or None when it has none (gone, or a half-written one)."""
        try:
            return self._meta(name)
        except (NotFound, ValueError):
            return None

    def spec(self, name: str) -> VMSpec:
        return VMSpec.from_dict(self._meta(name)["spec"])

    def run_info(self, name: str) -> dict | None:
        """run.json of a running VM, or None."""
        path = self.vm_dir(name) / "run" / "run.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def process_id(self, name: str) -> ProcessId | None:
        """The VM's QEMU process (pid + start time) while it runs."""
        pid = ProcessId.from_record(self.run_info(name))
        return pid if pid and pid.alive() else None

    def process(self, name: str) -> psutil.Process | None:
        """The VM's QEMU process if it is alive and really ours (pid + start time)."""
        pid = ProcessId.from_record(self.run_info(name))
        return pid.process() if pid else None

    def evidence(self, name: str) -> dict[str, Path]:
        folder = self.vm_dir(name)
        return {kind: folder / f for kind, f in (("serial console", "console.log"), ("QEMU log", "qemu.log"),
                                                 ("guest agent transcript", f"run/{TRANSCRIPT}"))
                if (folder / f).is_file()}

    def state(self, name: str) -> VMState:
        if not (self.vm_dir(name) / "vm.json").is_file():
            return VMState.MISSING
        return VMState.RUNNING if self.process(name) else VMState.STOPPED

    # -- image and accelerator ----------------------------------------------
    def image(self) -> Image:
        if self._image is None:
            self._image = find(self.recipe) or build(self.recipe, quiet=self.quiet)
        return self._image

    def accel(self, refresh: bool = False) -> accel_mod.Accel:
        """The accelerator VMs use here (probed once per host boot, cached)."""
        if self._accel is None or refresh:
            img = self.image()
            self._accel = accel_mod.choose(img.kernel, img.initrd, refresh=refresh)
        return self._accel

    # -- lifecycle -------------------------------------------------------
    def _record(self, vm_dir: Path, spec: VMSpec, image_key: str, image_dir: str, owner_pid: int | None,
                **extra) -> None:
        """Write vm.json, the file that makes a folder a VM (so it is written last, atomically)."""
        _write_json(vm_dir / "vm.json", {"spec": spec.to_dict(), "image": image_key, "image_dir": str(image_dir),
                                         "backend": self.name, "created_at": time.time(),
                                         "owner": owner_record(owner_pid), **extra})

    def claim(self, name: str, spec: VMSpec, owner_pid: int | None) -> None:
        """Record a VM handed over under a new name (the pool's hand-off): its spec and its owner."""
        meta = self._meta(name)
        meta["spec"] = spec.to_dict()
        if owner_pid:
            meta["owner"] = owner_record(owner_pid)
        _write_json(self.vm_dir(name) / "vm.json", meta)

    def create(self, spec: VMSpec, start: bool = True, owner_pid: int | None = None,
               template: bool = False) -> CreateResult:
        """Create (and by default start) a VM. Same spec again: "exists". Different: Mismatch.

        ``template``: the guest's RAM lives in a shared file of the VM's folder (``RAM_FILE``), so
        that ``snapshot`` leaves it to clones instead of writing it into the migration stream."""
        check_name(spec.name)
        require_arch(spec)
        vm_dir = self.vm_dir(spec.name)
        if (vm_dir / "vm.json").is_file():
            existing = self.spec(spec.name)
            diffs = existing.differences(spec)
            if diffs:
                raise Mismatch(f"VM '{spec.name}' already exists with a different spec; left untouched:\n  "
                               + "\n  ".join(diffs))
            return CreateResult(spec.name, "exists", self.state(spec.name))
        if shutil.which(QEMU) is None or shutil.which("qemu-img") is None:
            raise MissingDependency(f"'{QEMU}' and 'qemu-img' are needed: install qemu-system-x86 and qemu-utils")
        img = self.image()
        vm_dir.mkdir(parents=True, exist_ok=False)
        try:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(img.disk), "-F", "qcow2",
                            str(vm_dir / "disk.qcow2"), str(spec.disk)], check=True, capture_output=True, text=True)
            ram = {"file": str(vm_dir.resolve() / self.RAM_FILE), "share": True} if template else None
            self._record(vm_dir, spec, img.key, img.dir, owner_pid, **({"ram": ram} if ram else {}))
        except BaseException as exc:
            shutil.rmtree(vm_dir, ignore_errors=True)
            if isinstance(exc, subprocess.CalledProcessError):
                raise VmfError(f"qemu-img create failed for '{spec.name}': {exc.stderr.strip()}") from None
            raise
        if start:
            try:
                self.start(spec.name)
            except BaseException:
                self.destroy(spec.name)  # a VM that never booted is not left behind half-made
                raise
        return CreateResult(spec.name, "created", self.state(spec.name))

    def create_from_disk(self, spec: VMSpec, disk: Path, owner_pid: int | None = None) -> CreateResult:
        """Create VM ``spec.name`` on a standalone disk (a restored backup; it is moved in) and start it."""
        check_name(spec.name)
        vm_dir = self.vm_dir(spec.name)
        if vm_dir.exists():
            raise Mismatch(f"VM '{spec.name}' already exists in {self.storage}")
        img = self.image()
        vm_dir.mkdir(parents=True)
        try:
            shutil.move(disk, vm_dir / "disk.qcow2")  # a rename on one file system, a copy across two
            self._record(vm_dir, spec, img.key, img.dir, owner_pid, restored_from=str(disk))
            self.start(spec.name)
        except BaseException:
            self.destroy(spec.name)
            raise
        return CreateResult(spec.name, "created", self.state(spec.name))

    def create_many(self, specs: list[VMSpec], owner_pid: int | None = None) -> list[CreateResult | VmfError]:
        """Create and start several VMs; they boot in parallel. A result or the error, per spec."""
        results: list = []
        booting = []
        for spec in specs:  # launched from this thread: see procs.die_with_parent
            try:
                result = self.create(spec, start=False, owner_pid=owner_pid)
                if result.status == "created":
                    booting.append((spec.name, self.launch(spec.name)))
                results.append(result)
            except VmfError as exc:
                results.append(exc)
        with ThreadPoolExecutor(max_workers=max(1, len(booting))) as pool:
            errors = dict(zip([n for n, _ in booting], pool.map(lambda b: self._wait_or_error(*b), booting)))
        for i, r in enumerate(results):
            if isinstance(r, CreateResult) and errors.get(r.name):
                self.destroy(r.name)
                results[i] = errors[r.name]
            elif isinstance(r, CreateResult):
                r.state = self.state(r.name)
        return results

    def _wait_or_error(self, name: str, boot: Boot) -> VmfError | None:
        try:
            self.wait_ready(name, boot)
            return None
        except VmfError as exc:
            return exc

    def start(self, name: str) -> Machine:
        """Boot the VM and wait for its ready line; already running is fine."""
        if self.process(name):
            return self.machine(name)
        return self.wait_ready(name, self.launch(name))

    def launch(self, name: str, incoming: Path | None = None) -> Boot:
        """Spawn QEMU for a stopped VM and return at once; ``wait_ready`` finishes the boot.

        ``incoming``: a memory snapshot to restore; QEMU starts paused, waiting for it (``wait_restored``).
        QEMU and passt start side by side; the SSH port passt was given can be taken by someone else
        before passt binds it, and then the VM is launched again with another."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            boot, net = self._spawn(name, incoming)
            if net.wait_listening():
                return boot
            taken = VmfError(f"passt did not come up listening on 127.0.0.1:{net.ssh_port}, taken by another "
                             f"process since it was chosen (attempt {attempt} of {PORT_ATTEMPTS})")
            failure = boot.abandon(taken, f"VM '{name}' could not start its network")
            if attempt == PORT_ATTEMPTS:
                raise failure

    def _spawn(self, name: str, incoming: Path | None) -> tuple[Boot, Network]:
        meta = self._meta(name)
        if self.process(name):
            raise GuestError(f"VM '{name}' is already running")
        spec = VMSpec.from_dict(meta["spec"])
        img = Image(Path(meta["image_dir"]))
        if not img.disk.exists():
            raise NotFound(f"VM '{name}' was created from image {meta['image']}, which is no longer cached "
                           f"({img.dir}); destroy and re-create the VM")
        self._check_data_disks(name)
        vm_dir = self.vm_dir(name)
        clear_run_dir(vm_dir)  # sockets of a VM that died uncleanly
        run = make_run_dir(vm_dir)
        accel = self.accel()
        progress = Progress(f"vm {name}", self.quiet)
        progress.step(f"booting ({accel.name}, {spec.cpus} cpu, {spec.memory // 1024**2} MiB)")
        listeners = {s: _listen(run / f"{s}.sock") for s in SOCKETS}
        make_freshen_pipe(run)
        console_log = vm_dir / "console.log"
        offset = console_log.stat().st_size if console_log.exists() else 0
        relays = []  # the agent relay starts while passt does (it queues on QEMU's socket until QEMU runs)
        try:
            net = Network(spec.network, run, name)
            net_args = net.qemu_args(net.start(meanwhile=lambda: relays.append(_start_agent_relay(run, vm_dir)),
                                               handoff=True))
            relay = relays[0]
        except BaseException:
            for l in listeners.values():
                l.close()
            clear_run_dir(vm_dir)
            raise
        cmd = self._command(name, spec, img, accel, listeners, console_log, net_args, self._ram(meta, incoming))
        if incoming:  # paused until the state is in; one saved by this build resumes by itself then
            cmd += [*(() if _resumes(incoming) else ("-S",)), "-incoming", "defer"]
        # Die with the owner only when the owner is this very process, and only when
        # spawned from the main thread: PDEATHSIG fires when the forking *thread* exits.
        owned = ((meta.get("owner") or {}).get("pid") == os.getpid()
                 and threading.current_thread() is threading.main_thread())
        no_huge_pages_for_children()
        # The memory snapshot, open for QEMU to read as fd:N: `exec:cat` made it fork a shell and cat.
        state = os.open(incoming, os.O_RDONLY) if incoming else None
        try:
            with open(vm_dir / "qemu.log", "ab") as log:
                log_offset = log.tell()
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=vm_dir,
                                        pass_fds=[l.fileno() for l in listeners.values()]
                                        + ([state] if state is not None else []) + net.qemu_fds(),
                                        start_new_session=True, preexec_fn=die_with_parent if owned else None)
        finally:
            if state is not None:
                os.close(state)  # QEMU holds its own copy now
            net.close_qemu_end()
        CHILDREN[proc.pid] = proc
        for l in listeners.values():
            l.close()  # QEMU holds its own copies now
        info = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "accel": accel.name,
                "accel_reason": accel.reason, "started_at": time.time(), "cmdline": cmd,
                "agent_relay": relay.record(), **({"incoming_fd": state} if state is not None else {})}
        _write_json(run / "run.json", info)
        return Boot(proc, info, offset, progress, vm_dir, log_offset), net

    def wait_ready(self, name: str, boot: Boot) -> Machine:
        """Wait for the ready line of a launched VM; on failure kill it and say why."""
        vm_dir = self.vm_dir(name)
        run = vm_dir / "run"
        info = boot.info
        try:
            info["ssh_port"] = self._ssh_port(name)
            _write_json(run / "run.json", info)
            m = self.machine(name)
            m.console.wait_for(READY_LINE, boot.console_offset, self.accel().scale(60),
                               alive=boot.alive)
        except BaseException as exc:
            raise boot.abandon(exc, f"VM '{name}' failed to boot") from None
        boot.progress.step(f"ready in {boot.progress.elapsed():.1f}s (ssh 127.0.0.1:{info['ssh_port']})")
        return m

    def _ram(self, meta: dict, incoming: Path | None) -> dict | None:
        """The VM's file-backed RAM (a template's, shared; a clone's, private on the template's file), or None.

        A clone whose template is gone (a stale snapshot was removed) boots on anonymous RAM again;
        restoring its memory needs the same RAM layout, so that one is refused."""
        ram = meta.get("ram")
        if ram and not ram["share"] and not Path(ram["file"]).is_file():
            if incoming:
                raise NotFound(f"the template RAM file {ram['file']} this VM was cloned from is gone; "
                               "destroy and re-create the VM")
            return None
        return ram

    def _command(self, name: str, spec: VMSpec, img: Image, accel, listeners: dict, console_log: Path,
                 net_args: list[str], ram: dict | None = None) -> list[str]:
        fd = {s: listeners[s].fileno() for s in SOCKETS}
        freshen_pipe = (self.vm_dir(name) / "run").resolve() / FRESHEN_PIPE
        mib = spec.memory // 1024**2
        machine = f"{accel_mod.MACHINE},accel={accel.name}"
        ram_args = []
        if ram:  # share=off: the clone's writes stay its own (copy-on-write); the template's go to the file
            machine += ",memory-backend=ram"
            ram_args = ["-object", f"memory-backend-file,id=ram,size={mib}M,mem-path={_qemu_opt(ram['file'])},"
                                   f"share={'on' if ram['share'] else 'off'}"]
        cmd = [QEMU, "-name", f"guest={PREFIX}{name},debug-threads=off",
               "-machine", machine, *ram_args, "-smp", str(spec.cpus), "-m", f"{mib}M",
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               # Its snapshots leave the run state out: a restore then resumes without being told to.
               "-global", NO_RUN_STATE,
               "-kernel", str(img.kernel), "-initrd", str(img.initrd),
               "-append", accel.kernel_args(name),
               "-blockdev", "driver=file,filename=disk.qcow2,node-name=disk0-file",
               "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
               "-device", "virtio-blk-pci,drive=disk0,id=vda",
               # q35's root bus takes no hot-plugged device: data disks sit on a bridge (ACPI hot-plug).
               "-device", f"pci-bridge,id={DATA_BUS},chassis_nr=1,addr={DATA_BUS_SLOT:#x}",
               *net_args,
               "-device", "virtio-rng-pci",
               "-device", "virtio-serial-pci",
               "-chardev", f"socket,id=qga0,fd={fd['qga']},server=on,wait=off",
               "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
               # A pipe, not a socket: its host end is always connected, so the helper's read blocks
               # (on a port whose host end is closed, a read returns at once).
               "-chardev", f"pipe,id=fresh0,path={_qemu_opt(str(freshen_pipe))}",
               "-device", f"virtserialport,chardev=fresh0,name={FRESHEN_PORT}",
               "-chardev", f"socket,id=con0,fd={fd['console']},server=on,wait=off,logfile={console_log},logappend=on",
               "-serial", "chardev:con0",
               "-chardev", f"socket,id=qmp0,fd={fd['qmp']},server=on,wait=off",
               "-mon", "chardev=qmp0,mode=control"]
        for disk in self.data_disks(name):
            cmd += ["-blockdev", f"driver=qcow2,node-name={disk.device_id},file.driver=file,"
                                 f"file.filename={_qemu_opt(str(disk.file))}",
                    "-device", f"virtio-blk-pci,drive={disk.device_id},id={disk.device_id},bus={DATA_BUS},"
                               f"addr={disk.slot:#x}"]
        if accel.name == "kvm":
            cmd += ["-cpu", "host"]
        return cmd

    # -- data disks ----------------------------------------------------------
    def data_disks(self, name: str) -> list[DataDisk]:
        return [DataDisk.from_dict(d) for d in self._meta(name).get("disks", [])]

    def record_data_disks(self, name: str, disks: list[DataDisk]) -> None:
        meta = self._meta(name)
        meta["disks"] = [d.to_dict() for d in disks]
        _write_json(self.vm_dir(name) / "vm.json", meta)

    def _check_data_disks(self, name: str) -> None:
        """A VM whose data disk file is gone would not boot: say which, and what to do."""
        for disk in self.data_disks(name):
            if not disk.file.is_file():
                raise NotFound(f"VM '{name}' has the data disk '{disk.name}' attached, whose file {disk.file} "
                               f"is gone; detach it (`vmfixtures disk detach {disk.name}`) to start the VM")

    def attach_disk(self, name: str, disk: DataDisk) -> None:
        """QMP ``blockdev-add`` then ``device_add`` (virtio-blk-pci in the disk's slot of the data bridge); a failed
        ``device_add`` deletes the node again, so nothing half-attached is left."""
        with self._qmp(name) as qmp:
            _qmp_do(qmp, name, f"attach disk '{disk.name}'", "blockdev-add",
                    **{"node-name": disk.device_id, "driver": "qcow2",
                       "file": {"driver": "file", "filename": str(disk.file)}})
            try:
                _qmp_do(qmp, name, f"attach disk '{disk.name}'", "device_add", driver="virtio-blk-pci",
                        drive=disk.device_id, id=disk.device_id, bus=DATA_BUS, addr=f"{disk.slot:#x}")
            except BaseException:
                qmp.cmd("blockdev-del", **{"node-name": disk.device_id})
                raise

    def detach_disk(self, name: str, disk: DataDisk) -> None:
        """QMP ``device_del``, wait for QEMU's DEVICE_DELETED (the guest ejected the device), then
        ``blockdev-del``. A device already gone (an earlier detach timed out, then the guest let go)
        only has its node deleted."""
        with self._qmp(name) as qmp:
            try:
                qmp.cmd("device_del", id=disk.device_id)
            except QMPError as exc:
                if "not found" not in str(exc).lower():
                    raise GuestError(f"VM '{name}': QEMU refused to detach disk '{disk.name}': {exc}") from None
            else:
                what = f"VM '{name}' releasing disk '{disk.name}' (the guest must eject it)"
                for event in qmp_events(qmp, self.accel().scale(30), what):
                    if event.get("event") == "DEVICE_DELETED" and event["data"].get("device") == disk.device_id:
                        break
            nodes = {n.get("node-name") for n in qmp.cmd("query-named-block-nodes")}
            if disk.device_id in nodes:
                _qmp_do(qmp, name, f"detach disk '{disk.name}'", "blockdev-del", **{"node-name": disk.device_id})

    def block_devices(self, name: str) -> dict[str, str]:
        """QMP ``query-block``: every guest-visible block device but the system disk, with its file."""
        with self._qmp(name) as qmp:
            found = {}
            for dev in qmp.cmd("query-block"):
                qdev = dev.get("qdev") or ""
                dev_id = qdev.split("/")[3] if qdev.startswith("/machine/peripheral/") else qdev or dev.get("device")
                if dev_id == "vda" or not dev.get("inserted"):
                    continue
                found[dev_id] = dev["inserted"].get("file", "")
            return found

    @contextmanager
    def _qmp(self, name: str):
        """A QMP connection for one exchange. Closing tolerates a QEMU that already hung up
        (after `quit` or a fast power-off): qemu.qmp re-raises the reader's EOFError there."""
        qmp = _qmp_connect((self.vm_dir(name) / "run").resolve() / "qmp.sock", name)
        try:
            yield qmp
        except (EOFError, ExecInterruptedError) as exc:  # QEMU hung up mid-exchange: it ended, or is ending
            raise GuestError(f"VM '{name}': QEMU closed its QMP connection ({type(exc).__name__}: {exc}); "
                             "it has ended or is ending") from None
        finally:
            try:
                qmp.close()
            except (EOFError, OSError, QMPError):
                pass

    def stop(self, name: str, timeout: float | None = None) -> StopResult:
        """ACPI power-down with a deadline, then forced. Stopped already is fine."""
        self._meta(name)
        start = time.monotonic()
        proc = self.process(name)
        self.release(name)
        kill_helpers(self.vm_dir(name))
        graceful = True
        if proc:
            deadline = timeout if timeout is not None else self.accel().scale(20)
            try:
                self._power_button(name)
                graceful = self._wait_off(name, proc, deadline)
            except GuestError:
                graceful = False
            if not graceful:
                self._force_off(name, proc)
        clear_run_dir(self.vm_dir(name))
        return StopResult(name, graceful, time.monotonic() - start)

    def _load_memory(self, name: str, mem: Path) -> None:
        """Feed a memory snapshot to the waiting QEMU and resume the guest.

        A snapshot saved by this build (``RESUMES``) carries no run state, so QEMU, started without
        -S, resumes the guest by itself once the state is in: one exchange on a plain socket, no wait
        (qemu.qmp's connection and the wait for the migration's end took ~25 ms more). The guest's
        first answer is the proof; a stream that does not load ends QEMU, and ``Boot.abandon`` says why.
        An older snapshot's state says "paused": it is waited for and continued."""
        caps = ("migrate-set-capabilities", {"capabilities": self._migration_caps(name)})
        incoming = ("migrate-incoming", {"uri": f"fd:{self.run_info(name)['incoming_fd']}"})
        if _resumes(mem):
            qmp_exchange((self.vm_dir(name) / "run").resolve() / "qmp.sock", [caps, incoming],
                         timeout=self.accel().scale(30), what=f"restore of '{name}'")
            return
        with self._qmp(name) as qmp:
            qmp.cmd(caps[0], **caps[1])
            qmp.cmd(incoming[0], **incoming[1])
            _wait_migration(qmp, self.accel().scale(60), f"restore of '{name}'")
            qmp.cmd("cont")

    def _ssh_port(self, name: str) -> int:
        """The host port forwarded to the guest's sshd: passt's, or the one QEMU chose (hostfwd on port 0)."""
        record = network.read_record(self.vm_dir(name) / "run") or {}
        if record.get("ssh_port"):
            return record["ssh_port"]
        with self._qmp(name) as qmp:
            return _forwarded_port(qmp.cmd("human-monitor-command", **{"command-line": "info usernet"}))

    def _power_button(self, name: str) -> None:
        """Press the VM's (ACPI) power button."""
        with self._qmp(name) as qmp:
            qmp.cmd("system_powerdown")

    def _wait_off(self, name: str, proc: psutil.Process, deadline: float) -> bool:
        """Wait until the VM has powered off (its process exited), at most ``deadline`` seconds."""
        return wait_exit(proc.pid, deadline)

    def _force_off(self, name: str, proc: psutil.Process | None) -> None:
        """Pull the plug: the VM's process is gone when this returns."""
        kill(proc)

    # -- memory snapshots -------------------------------------------------
    def _saves_without_run_state(self, name: str) -> bool:
        """VM ``name``'s QEMU leaves the run state out of its snapshots (it was started by this build)."""
        return NO_RUN_STATE in ((self.run_info(name) or {}).get("cmdline") or [])

    def _migration_caps(self, name: str) -> list[dict]:
        """Migration capabilities, the same on the saving and the loading side: a VM on file-backed RAM
        migrates with ``x-ignore-shared`` (a template's shared RAM is left out of the stream, its clones
        find it in the file; private RAM is written as usual) and the stream's layout depends on it."""
        caps = [{"capability": "events", "state": True}]
        if self._meta(name).get("ram"):
            caps.append({"capability": "x-ignore-shared", "state": True})
        return caps

    def _save_memory_and_end(self, name: str, proc: psutil.Process, mem: Path) -> None:
        """Pause the guest, write its memory to ``mem`` and end the VM's process."""
        with self._qmp(name) as qmp:
            qmp.cmd("migrate-set-capabilities", capabilities=self._migration_caps(name))
            qmp.cmd("stop")
            qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(mem))}")
            _wait_migration(qmp, self.accel().scale(60), f"snapshot of '{name}'")
            try:
                qmp.cmd("quit")
            except (EOFError, OSError, ExecInterruptedError):
                pass  # QEMU may hang up before its reply to `quit` arrives; its exit is checked below
        if not wait_exit(proc.pid, 10.0):
            kill(proc)

    def snapshot(self, name: str, dest: Path) -> Path:
        """Save a running VM's memory and freeze its disk into ``dest``; the VM is consumed.

        ``dest`` then holds ``mem.state`` (QMP ``migrate`` to ``exec:cat``; QEMU 7.2
        has no ``file:`` URI), ``disk.qcow2`` (never written again: restores
        put an overlay on it) and ``snapshot.json``.
        """
        meta = self._meta(name)
        proc = self.process(name)
        if not proc:
            raise GuestError(f"VM '{name}' is not running; only a running VM can be snapshotted")
        dest.mkdir(parents=True)
        helper = start_freshen_helper(self.machine(name))
        resumes = self._saves_without_run_state(name)
        self._save_memory_and_end(name, proc, dest / self.MEMORY_FILE)
        os.rename(self.vm_dir(name) / "disk.qcow2", dest / "disk.qcow2")
        os.chmod(dest / "disk.qcow2", 0o444)
        extra = {}
        if meta.get("ram"):  # the RAM the stream left out: clones map this file
            os.rename(meta["ram"]["file"], dest / self.RAM_FILE)
            extra["ram"] = self.RAM_FILE
        _write_json(dest / "snapshot.json", {"spec": meta["spec"], "image": meta["image"],
                                             "image_dir": meta["image_dir"], "created_at": time.time(),
                                             "freshen": FRESHEN_PORT if helper else None, RESUMES: resumes,
                                             "machine": accel_mod.MACHINE, **extra})
        clear_run_dir(self.vm_dir(name))
        shutil.rmtree(self.vm_dir(name), ignore_errors=True)
        return dest

    def create_from_snapshot(self, spec: VMSpec, snapshot: Path, owner_pid: int | None = None) -> Boot:
        """Create VM ``spec.name`` from a snapshot and start restoring it; finish with ``wait_restored``."""
        check_name(spec.name)
        vm_dir = self.vm_dir(spec.name)
        if vm_dir.exists():
            raise Mismatch(f"VM '{spec.name}' already exists in {self.storage}")
        snap = json.loads((snapshot / "snapshot.json").read_text())
        vm_dir.mkdir(parents=True)
        try:
            shutil.copyfile(_blank_overlay(snapshot), vm_dir / "disk.qcow2")
            ram = {"file": str(Path(snapshot).resolve() / snap["ram"]), "share": False} if snap.get("ram") else None
            self._record(vm_dir, spec, snap["image"], snap["image_dir"], owner_pid, snapshot=str(snapshot),
                         **({"ram": ram} if ram else {}))
            # The ready line predates the snapshot: say in the log where this guest came from.
            with open(vm_dir / "console.log", "a") as log:
                log.write(f"[vmfixtures] restored from memory snapshot {snapshot} at {time.ctime()}\n")
            return self.launch(spec.name, incoming=snapshot / self.MEMORY_FILE)
        except BaseException:
            self.destroy(spec.name)
            raise

    def wait_restored(self, name: str, boot: Boot, mem: Path | None = None, personalize: bool = True) -> Machine:
        """Load a memory snapshot into a launched VM and resume it; fix clock and hostname
        (``personalize``) when it came from a pool snapshot shared by many VMs."""
        mem = mem or Path(self._meta(name)["snapshot"]) / self.MEMORY_FILE
        snapshot = mem.parent
        info = boot.info
        try:
            self._load_memory(name, mem)
            info["ssh_port"] = self._ssh_port(name)
            info["restored_from"] = str(snapshot)
            _write_json(self.vm_dir(name) / "run" / "run.json", info)
            m = self.machine(name)
            if personalize:
                self.personalize(m)
            else:
                m.agent.set_time()  # the guest clock stopped with the snapshot
        except BaseException as exc:
            raise boot.abandon(exc, f"VM '{name}' failed to restore from {snapshot}") from None
        boot.progress.step(f"restored in {boot.progress.elapsed():.2f}s (ssh 127.0.0.1:{info['ssh_port']})")
        return m

    # -- named VM snapshots (memory + disk) -----------------------------------
    def _new_snapshot_folder(self, name: str, tag: str) -> tuple[psutil.Process, Path, Path]:
        """(the running VM's process, the snapshot's folder, an empty partial folder to fill first)."""
        check_name(tag, "snapshot tag")
        proc = self.process(name)
        if not proc:
            raise GuestError(f"VM '{name}' is not running; only a running VM can be snapshotted")
        dest = self.vm_dir(name) / "snapshots" / tag
        if dest.exists():
            raise Mismatch(f"VM '{name}' already has a snapshot '{tag}'; delete it or choose another tag")
        partial = dest.with_name(f".{tag}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return proc, dest, partial

    def save_vm_snapshot(self, name: str, tag: str) -> Path:
        """Save a running VM's memory and disk as ``tag``; the VM keeps running.

        The guest is paused, its memory migrated to ``mem.state`` (completion
        flushes and releases the disk), the disk overlay copied, and the guest
        resumed: the pause lasts about as long as the memory write.
        """
        proc, dest, partial = self._new_snapshot_folder(name, tag)
        resumes = self._saves_without_run_state(name)
        try:
            with self._qmp(name) as qmp:
                qmp.cmd("migrate-set-capabilities", capabilities=self._migration_caps(name))
                qmp.cmd("stop")
                try:
                    qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(partial / 'mem.state'))}")
                    _wait_migration(qmp, self.accel().scale(60), f"snapshot '{tag}' of '{name}'")
                    subprocess.run(["cp", "--sparse=always", str(self.vm_dir(name) / "disk.qcow2"),
                                    str(partial / "disk.qcow2")], check=True, capture_output=True)
                finally:
                    qmp.cmd("cont")  # resume whatever happened: a failed snapshot must not leave it paused
            _write_json(partial / "snapshot.json", {"tag": tag, "vm": name, "created_at": time.time(), RESUMES: resumes,
                                                    "machine": accel_mod.MACHINE, "spec": self._meta(name)["spec"],
                                                    "disks": self._meta(name).get("disks", [])})
            os.rename(partial, dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return dest

    def vm_snapshots(self, name: str) -> list[str]:
        self._meta(name)
        folder = self.vm_dir(name) / "snapshots"
        return sorted(d.name for d in folder.iterdir() if (d / "snapshot.json").is_file()) if folder.is_dir() else []

    def restore_vm_snapshot(self, name: str, tag: str) -> Machine:
        """Put the VM back to snapshot ``tag``: its disk as it was, its memory (processes) as they were."""
        snap = self.vm_dir(name) / "snapshots" / tag
        if not (snap / "snapshot.json").is_file():
            known = ", ".join(self.vm_snapshots(name)) or "none"
            raise NotFound(f"VM '{name}' has no snapshot '{tag}' (snapshots: {known})")
        saved = json.loads((snap / "snapshot.json").read_text())
        # Its memory image only loads into the machine it was saved on (before q35, builds saved none: pc).
        machine = saved.get("machine", "pc")
        if machine != accel_mod.MACHINE:
            raise Mismatch(f"VM '{name}': snapshot '{tag}' was saved on the machine '{machine}' and this build "
                           f"starts VMs on '{accel_mod.MACHINE}', so its memory cannot be loaded; the VM is "
                           "unchanged (start it and save a new snapshot)")
        # The memory image expects the data disks it was saved with, in the same slots.
        then = {(d["name"], d["slot"]) for d in saved.get("disks", [])}
        now = {(d.name, d.slot) for d in self.data_disks(name)}
        if then != now:
            raise Mismatch(f"VM '{name}' had the data disks {sorted(n for n, _ in then) or 'none'} attached when "
                           f"snapshot '{tag}' was saved and has {sorted(n for n, _ in now) or 'none'} now; "
                           "attach or detach disks to match, then restore")
        proc = self.process(name)
        self.release(name)
        kill_helpers(self.vm_dir(name))
        self._force_off(name, proc)  # the running state is discarded: that is what restoring means
        clear_run_dir(self.vm_dir(name))
        tmp = self.vm_dir(name) / ".disk.restore"
        subprocess.run(["cp", "--sparse=always", str(snap / "disk.qcow2"), str(tmp)], check=True, capture_output=True)
        os.replace(tmp, self.vm_dir(name) / "disk.qcow2")
        with open(self.vm_dir(name) / "console.log", "a") as log:
            log.write(f"[vmfixtures] restored VM snapshot '{tag}' at {time.ctime()}\n")
        boot = self.launch(name, incoming=snap / self.MEMORY_FILE)
        return self.wait_restored(name, boot, snap / self.MEMORY_FILE, personalize=False)

    def personalize(self, m: Machine, clock: bool = True) -> None:
        """What must differ between VMs restored from one snapshot: the clock, the kernel's random
        number generator and the hostname.

        A clone whose snapshot has the helper gets all three from it, on its port, at the restore
        and again at each hand-off (fresh randomness per tenant; the port is a few milliseconds where
        the agent's file commands, cold in that QEMU, took ~15 ms more). Without the helper: the
        clock is stale only right after a restore (``clock``; it stopped with the snapshot), and
        it and the random generator are set in one guest process (``fresh_clock_and_entropy``:
        qemu-ga's guest-set-time also runs hwclock, 0.4-1 s under TCG), the name by the agent."""
        if self._has_freshen_helper(m.name) and freshen_through_helper(m, self.vm_dir(m.name) / "run"):
            return
        if clock:
            fresh_clock_and_entropy(m)
        m.agent.write_file("/proc/sys/kernel/hostname", m.name.encode())

    def _has_freshen_helper(self, name: str) -> bool:
        """The snapshot VM ``name`` came from has a clone helper waiting on its port (an older snapshot's
        helper waited elsewhere: its clones take the slow path)."""
        snapshot = self._meta(name).get("snapshot")
        return bool(snapshot) and (read_json(Path(snapshot) / "snapshot.json") or {}).get("freshen") == FRESHEN_PORT

    def restart(self, name: str) -> Machine:
        self.stop(name)
        return self.start(name)

    def destroy(self, name: str) -> DestroyProof:
        """Kill QEMU (no graceful shutdown: the disk is thrown away) and remove every file.

        Safe to race with another destroyer of the same VM (the daemon reaping a dead
        lease while the next run reaps the dead run): whoever comes second finds less
        to do, never an error."""
        vm_dir = self.vm_dir(name)
        if not vm_dir.exists():
            raise NotFound(f"no VM named '{name}' in {self.storage} (see `vmfixtures vm list`)")
        info = self.run_info(name)
        proc = self.process(name)
        self.release(name)
        kill_helpers(vm_dir)  # mount helpers first: they hold SSH sessions into the guest
        self._force_off(name, proc)
        try:
            files = [str(p) for p in vm_dir.rglob("*")]
        except OSError:
            files = []
        clear_run_dir(vm_dir)
        shutil.rmtree(vm_dir, ignore_errors=True)
        gone = proc is None or not process_alive(proc.pid)
        leftovers = [str(vm_dir)] if vm_dir.exists() else []
        return DestroyProof(name, info["pid"] if info else None, gone, files, leftovers)

    def hypervisor_state(self, name: str) -> str | None:
        """What QEMU says the guest is doing ('running', 'paused', ...), None when it cannot be asked."""
        try:
            with self._qmp(name) as qmp:
                return qmp.cmd("query-status")["status"]
        except (VmfError, OSError, Exception):  # QMP busy or going away: not evidence either way
            return None

    def running_accel(self, name: str) -> str:
        """The accelerator the running QEMU itself reports (QMP query-kvm): 'kvm' or 'tcg'."""
        with self._qmp(name) as qmp:
            return "kvm" if qmp.cmd("query-kvm")["enabled"] else "tcg"

    def machine(self, name: str) -> Machine:
        """A handle to talk to the running VM (guest agent, SSH, console)."""
        meta = self._meta(name)
        info = self.run_info(name)
        if not info or not self.process(name):
            raise GuestError(f"VM '{name}' is not running (start it with `vmfixtures vm start {name}`)")
        cached = self._machines.get(name)
        if cached and cached[0] == info["pid"] and cached[1].ssh_port == info.get("ssh_port"):
            return cached[1]
        if cached:
            cached[1].close()
        run = (self.vm_dir(name) / "run").resolve()  # the short path: socket paths are length-limited
        m = Machine(name=name, run_dir=run, console_log=self.vm_dir(name) / "console.log",
                    ssh_port=info.get("ssh_port"), host_key=Image(Path(meta["image_dir"])).host_key,
                    key_path=keys.ensure_keypair(), accel=info["accel"], agent=self._agent(name, meta))
        self._machines[name] = (info["pid"], m)
        return m

    def _agent(self, name: str, meta: dict):
        """The guest agent channel (None: the socket QEMU serves in the run folder)."""
        return

    def known_hosts(self, name: str) -> Path:
        """A known_hosts file pinning the guest's host key at its forwarded port (for OpenSSH)."""
        m = self.machine(name)
        path = self.vm_dir(name) / "run" / "known_hosts"
        path.write_text(f"[127.0.0.1]:{m.ssh_port} {m.ssh.host_key.export_public_key().decode().strip()}\n")
        return path

    def release(self, name: str) -> None:
        """Close this driver's guest connections to ``name`` so another client can use them."""
        cached = self._machines.pop(name, None)
        if cached:
            cached[1].close()

    # -- sweeping ----------------------------------------------------------
    def sweep(self) -> list[str]:
        """Destroy VMs whose owner process is dead, and kill QEMU processes of ours
        that no VM folder accounts for. Returns what was reclaimed."""
        reclaimed = []
        known_pids = set()
        for name in self.names():
            meta = self._meta(name)
            owner = meta.get("owner")
            if owner and live_process(owner["pid"], owner["create_time"]) is None:
                self.destroy(name)
                reclaimed.append(f"vm {name} (owner pid {owner['pid']} is gone)")
                continue
            info = self.run_info(name)
            if info:
                known_pids.add(info["pid"])
        for proc, _ in orphan_qemus([self.storage], known_pids):
            kill(proc)
            reclaimed.append(f"orphan QEMU pid {proc.pid}")
        return reclaimed + kill_helpers_without_folder()


def our_qemu_processes(storage: Path | None = None) -> list[psutil.Process]:
    """QEMU processes carrying our name prefix (optionally: of VMs under ``storage``).

    A VM's home is told by facts of the process, whichever backend started it:
    its working folder (direct QEMU runs in the VM's folder) or an open file
    under ``storage`` (libvirt's QEMU runs in / but holds the VM's disk open;
    after a pool hand-off renamed the folder, the kernel shows the new path)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not any(a.startswith(f"guest={PREFIX}") for a in cmd):
            continue
        if storage is not None and not vm_home(proc, [storage]):
            continue
        found.append(proc)
    return found


def vm_home(proc: psutil.Process, storages) -> str | None:
    """The folder under one of ``storages`` that QEMU process ``proc`` works in or holds a file of."""
    prefixes = [str(Path(s).resolve()) + "/" for s in storages]
    try:
        cwd = proc.cwd() + "/"
        if any(cwd.startswith(p) for p in prefixes):
            return cwd.rstrip("/")
        for f in proc.open_files():
            if any(f.path.startswith(p) for p in prefixes):
                return str(Path(f.path).parent)
    except psutil.Error:
        return None
    return None




def orphan_qemus(storages, known_pids) -> list[tuple[psutil.Process, str]]:
    """(process, VM folder) of our QEMUs of VMs under ``storages`` whose pid is not known."""
    found = []
    for proc in our_qemu_processes():
        if proc.pid in known_pids:
            continue
        home = vm_home(proc, storages)
        if home:
            found.append((proc, home))
    return found


# Mix host randomness into the guest's pool, then RNDRESEEDCRNG (_IO('R', 0x07)): the kernel rekeys its
# generator from the pool at once. perl is in every Debian system (perl-base is essential).
_RESEED = ('open(my $r, "+<", "/dev/urandom") or die "$!"; binmode STDIN; read(STDIN, my $s, 64) == 64 or die "seed"; '
           'syswrite($r, $s) == 64 or die "$!"; ioctl($r, 0x5207, 0) or die "reseed: $!"')


def reseed_entropy(m: Machine) -> None:
    """Give a restored guest a random generator of its own. VMs restored from one memory snapshot
    share the kernel's generator state (this guest kernel has no VM-generation-ID driver to notice
    the restore), so siblings drew the same UUIDs and keys until the kernel happened to reseed."""
    r = m.execute(["perl", "-e", _RESEED], input=os.urandom(64), timeout=30)
    if not r.ok:
        raise GuestError(f"VM '{m.name}': reseeding the guest's random generator failed: {r.stderr.strip()[:200]}")


# The same reseed, then the clock: the host's time (last 16 bytes on stdin) plus how long this process has
# existed (uptime minus its start time, /proc/self/stat field 22 in 1/100 s): exec and perl's start-up take
# 0.1-0.3 s under TCG. clock_settime(CLOCK_REALTIME) is syscall 227 on x86_64 (the host's own architecture).
_FRESHEN = (_RESEED + '; read(STDIN, my $t, 16) == 16 or die "time"; my ($sec, $n) = unpack("q<q<", $t); '
            'open(my $st, "<", "/proc/self/stat") or die "$!"; my @f = split / /, (split /\\) /, scalar <$st>)[1]; '
            'open(my $up, "<", "/proc/uptime") or die "$!"; my ($u) = split / /, scalar <$up>; '
            '$n += int(($u - $f[19] / 100) * 1e9); $sec += int($n / 1000000000); $n %= 1000000000; '
            'syscall(227, 0, pack("q<q<", $sec, $n)) == 0 or die "clock: $!"')


def fresh_clock_and_entropy(m: Machine) -> None:
    """``reseed_entropy`` and the host's clock in one guest process (each costs ~0.1 s under TCG).
    The time is taken just before the call; the guest adds its process's age when it sets the clock."""
    ns = time.time_ns()
    when = int.to_bytes(ns // 10**9, 8, "little", signed=True) + int.to_bytes(ns % 10**9, 8, "little", signed=True)
    r = m.execute(["perl", "-e", _FRESHEN], input=os.urandom(64) + when, timeout=30)
    if not r.ok:
        raise GuestError(f"VM '{m.name}': setting the clock and reseeding the random generator failed: "
                         f"{r.stderr.strip()[:200]}")


def start_freshen_helper(m: Machine) -> bool:
    """Start the clone helper (guest/freshen.pl) in a VM about to become a pool snapshot, and wait
    until it has opened its port: each clone then finds it waiting (``freshen_through_helper``).
    False when it did not come up: the snapshot is still good, its clones take the slow path."""
    try:
        m.agent.call("guest-exec", path="/usr/bin/perl", arg=["-e", FRESHEN_HELPER.read_text()])
        return m.execute(f"i=0; until [ -e {FRESHEN_READY} ]; do i=$((i+1)); [ $i -gt 1000 ] && exit 1; "
                         f"[ -e {FRESHEN_FAILED} ] && exit 1; busybox usleep 5000; done", timeout=30).ok
    except RefusedCommand:
        return False


def freshen_through_helper(m: Machine, run: Path, timeout: float = 2.0) -> bool:
    """Hand a restored clone's helper fresh randomness, the host's time and the clone's name on its
    port; True when it answers that it set them all. The guest agent is asked to answer meanwhile
    (a restore hands out a VM whose agent answers): the helper works while the agent wakes up.

    Both ends are opened without blocking: a clone whose helper (or QEMU) is gone answers nothing,
    and False sends the caller to the slow path."""
    ns = time.time_ns()
    when = int.to_bytes(ns // 10**9, 8, "little", signed=True) + int.to_bytes(ns % 10**9, 8, "little", signed=True)
    message = os.urandom(64) + when + m.name.encode()
    try:
        answers = os.open(run / f"{FRESHEN_PIPE}.out", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False  # a VM started before clones had the port
    try:
        try:
            os.read(answers, 65536)  # whatever an earlier, abandoned exchange left
        except BlockingIOError:
            pass
        try:
            ask = os.open(run / f"{FRESHEN_PIPE}.in", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            os.write(ask, b"VMFX" + len(message).to_bytes(2, "little") + message)
        finally:
            os.close(ask)
        m.agent.ping()
        expected, got = f"ok {m.name}\n".encode(), b""
        deadline = time.monotonic() + timeout
        while not got.endswith(b"\n") and len(got) < 4096:
            ready, _, _ = select.select([answers], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            try:
                chunk = os.read(answers, 4096)
            except BlockingIOError:
                continue
            got += chunk
        return got == expected
    finally:
        os.close(answers)


def runtime_root() -> Path:
    """Short, private folder for sockets: Unix socket paths are limited to 107 bytes."""
    return paths.runtime_dir()


def make_run_dir(vm_dir: Path) -> Path:
    """Create the VM's socket folder under ``runtime_root`` and link it as ``vm_dir/run``."""
    root = paths.private_dir(runtime_root(), "VM sockets")
    target = root / hashlib.sha256(str(vm_dir.resolve()).encode()).hexdigest()[:16]
    target.mkdir(mode=0o700)
    (target / "vm_dir").write_text(str(vm_dir.resolve()))
    (vm_dir / "run").symlink_to(target)
    return target


def _resumes(mem: Path) -> bool:
    """The memory snapshot ``mem`` was saved without the run state: a restore resumes by itself."""
    return bool((read_json(Path(mem).parent / "snapshot.json") or {}).get(RESUMES))


def make_freshen_pipe(run: Path) -> Path:
    """The two FIFOs of the clone helper's port (QEMU's pipe chardev opens PATH.in and PATH.out)."""
    for end in ("in", "out"):
        os.mkfifo(run / f"{FRESHEN_PIPE}.{end}", 0o600)
    return run / FRESHEN_PIPE


def _start_agent_relay(run: Path, vm_dir: Path) -> ProcessId:
    """Start the process that holds QEMU's guest agent socket for the VM's life (see guest/relay.py).

    Its listening socket is made here, before it runs, so clients queue on it at once instead of
    reaching QEMU's socket around it. It ends by itself when QEMU closes the agent socket."""
    listener = _listen(run / AGENT_RELAY_SOCKET)
    try:
        with open(run / "relay.log", "ab") as log:  # not QEMU's log: that one explains failed boots
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(RELAY), str(run / "qga.sock"),
                                     str(listener.fileno())], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=[listener.fileno()], start_new_session=True)
    finally:
        listener.close()
    CHILDREN[proc.pid] = proc
    return ProcessId.of(proc.pid)


def our_relays() -> list[tuple[psutil.Process, Path]]:
    """(process, socket folder) of agent relays of ours (for leak checks: each ends with its QEMU)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        after = cmd[cmd.index(str(RELAY)) + 1:] if str(RELAY) in cmd else []
        if after:  # the relay's first argument: QEMU's agent socket in the VM's socket folder
            found.append((proc, Path(after[0]).parent))
    return found


def _stop_agent_relay(run: Path) -> None:
    pid = ProcessId.from_record((read_json(run / "run.json") or {}).get("agent_relay"))
    if pid:
        kill(pid.process())


def stop_run_dir_helpers(run: Path) -> None:
    """Stop what serves a VM's socket folder: passt, a filtered VM's firewall table, the agent relay."""
    network.teardown(run)
    _stop_agent_relay(run)


def kill_helpers_without_folder() -> list[str]:
    """Kill passt processes and agent relays whose socket folder is gone: a VM reclaimed before it had
    recorded them (its starter was SIGKILLed in between). A starting VM's folder exists before they do."""
    killed = []
    for proc, folder in network.our_passts(runtime_root()) + our_relays():
        if not folder.exists():
            kill(proc)
            killed.append(f"helper pid {proc.pid} of the removed socket folder {folder}")
    return killed


def clear_run_dir(vm_dir: Path) -> None:
    """Remove the VM's socket folder and its link; fine if neither exists."""
    link = vm_dir / "run"
    if link.exists():
        stop_run_dir_helpers(link)  # they live as long as the sockets
    if link.is_symlink():
        try:
            shutil.rmtree(os.readlink(link), ignore_errors=True)
        except FileNotFoundError:
            pass  # another reaper (the daemon, the next run) removed it first
        link.unlink(missing_ok=True)
    elif link.exists():
        shutil.rmtree(link, ignore_errors=True)


def run_dirs_of(storage: Path) -> list[Path]:
    """Socket folders that belong to VMs under ``storage`` (for leak checks)."""
    root = runtime_root()
    if not root.is_dir():
        return []
    prefix = str(Path(storage).resolve())
    found = []
    for d in root.iterdir():
        try:
            if (d / "vm_dir").read_text().startswith(prefix):
                found.append(d)
        except OSError:
            continue
    return found


def orphan_run_dirs() -> list[Path]:
    """Socket folders of ours whose VM folder no longer exists."""
    root = runtime_root()
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        try:
            if not Path((d / "vm_dir").read_text()).exists():
                found.append(d)
        except OSError:
            continue
    return found


def _listen(path: Path) -> socket.socket:
    if len(str(path)) > 107:
        raise VmfError(f"socket path too long for a Unix socket ({len(str(path))} > 107 bytes): {path}; "
                       "set VMFIXTURES_STATE_DIR to a shorter folder")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o600)
    s.listen(8)
    return s


def qmp_exchange(path: Path, commands: list[tuple[str, dict]], timeout: float, what: str) -> list:
    """Negotiate and send ``commands`` to a QMP socket in one write; return their answers in order
    (events are skipped). Raises GuestError naming ``what`` for a refused command or a QEMU that hung up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        stream = sock.makefile("rb")
        stream.readline()  # the greeting
        sock.sendall(b"".join(json.dumps({"execute": c, **({"arguments": a} if a else {})}).encode() + b"\n"
                              for c, a in [("qmp_capabilities", {}), *commands]))
        answers = []
        while len(answers) <= len(commands):
            line = stream.readline()
            if not line:
                raise GuestError(f"{what}: QEMU closed its monitor")
            reply = json.loads(line)
            if "error" in reply:
                raise GuestError(f"{what}: QEMU refused: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                answers.append(reply["return"])
        return answers[1:]
    except socket.timeout:
        raise Timeout(f"{what}: QEMU's monitor did not answer within {timeout:.0f}s") from None
    except (OSError, ValueError) as exc:
        raise GuestError(f"{what}: QEMU's monitor: {exc}") from None
    finally:
        sock.close()


def qmp_events(qmp: QEMUMonitorProtocol, timeout: float, what: str):
    """Yield QMP events as they arrive; raise Timeout naming ``what`` once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"{what} did not complete within {timeout:.0f}s")
        try:
            event = qmp.pull_event(wait=float(remaining))
        except TimeoutError:
            continue
        if event:
            yield event


def _wait_migration(qmp: QEMUMonitorProtocol, timeout: float, what: str) -> None:
    """Block on MIGRATION events until ``completed``; fail on ``failed``/``cancelled``."""
    for event in qmp_events(qmp, timeout, what):
        if event.get("event") == "MIGRATION":
            status = event["data"]["status"]
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise GuestError(f"{what} {status}")


def _forwarded_port(usernet: str) -> int:
    for line in usernet.splitlines():
        if "HOST_FORWARD" in line:
            return int(line.split()[3])
    raise GuestError(f"no SSH port forward found in QEMU's 'info usernet':\n{usernet}")


def _qemu_opt(value: str) -> str:
    """A value inside a QEMU option string: commas are doubled."""
    return value.replace(",", ",,")


def _qmp_connect(path: Path, name: str, attempts: int = 3) -> QEMUMonitorProtocol:
    """A negotiated QMP connection to VM ``name``.

    QEMU's monitor socket takes one client at a time, and it notices a client gone only when it next
    reads: events it emits meanwhile (a restore's migration and resume events, after ``qmp_exchange``
    hung up) go to the next client, before that client's greeting. qemu.qmp then fails its greeting or
    negotiation (about one restore in 30 of an isolated VM, whose SSH port is read over QMP right after).
    The next connection gets a clean greeting, so that failure is tried again; any other is not."""
    for attempt in range(1, attempts + 1):
        qmp = QEMUMonitorProtocol(str(path))
        try:
            qmp.connect()
            return qmp
        except Exception as exc:  # qemu.qmp raises its own ConnectError types
            if attempt == attempts or not isinstance(getattr(exc, "exc", None), (GreetingError, NegotiationError)):
                raise GuestError(f"VM '{name}': cannot connect to QMP: {exc}") from None
            time.sleep(0.01)


def _qmp_do(qmp: QEMUMonitorProtocol, name: str, what: str, command: str, **arguments):
    """One QMP command whose refusal is a GuestError naming the VM and what was being done."""
    try:
        return qmp.cmd(command, **arguments)
    except QMPError as exc:
        raise GuestError(f"VM '{name}': QEMU refused to {what} ({command}): {exc}") from None


def _blank_overlay(snapshot: Path) -> Path:
    """An empty overlay on the snapshot's disk, made once per snapshot: every clone starts from a copy
    of it (a copy takes well under a millisecond, `qemu-img create` ~15 ms; the backing file's path
    in its header is the same for every clone)."""
    blank = snapshot / "overlay.qcow2"
    if not blank.is_file():
        tmp = snapshot / f".overlay.{os.getpid()}.{threading.get_ident()}.tmp"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(snapshot / "disk.qcow2"),
                        "-F", "qcow2", str(tmp)], check=True, capture_output=True, text=True)
        os.replace(tmp, blank)  # whole or not at all: clones restored side by side may race to make it
    return blank


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2) + "\n")
