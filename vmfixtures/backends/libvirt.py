"""The libvirt backend: the same VMs, run as transient libvirt domains (libvirt-python).

A VM keeps the folder layout of the qemu backend (``vm.json``, a qcow2
overlay on the image, ``console.log``, a socket folder linked as ``run/``),
so mounts, agents, backups, forwarding and the observer see the same VM
whichever backend runs it. What changes is who drives QEMU:

- the domain XML is generated from the VM spec (direct kernel boot of the
  project's image, virtio disk, user-mode network, virtio-rng, the guest
  agent channel, the serial console on a socket with a log file);
- the guest agent is reached through libvirt (``qemuAgentCommand``): libvirt
  itself holds the agent's socket, and serialises its users;
- stopping waits for libvirt's lifecycle event, not for a poll;
- memory snapshots are libvirt save files. libvirt refuses to restore a save
  file under another name or UUID, so each clone gets its own copy of the
  file with a rewritten header (a kernel-side copy, ~50 ms for 110 MiB).

Domains are named ``vmfx-<vm>-<8 hex>`` and carry the VM's storage folder in
their metadata; domains without the prefix are never touched. The connection
URI is $VMFIXTURES_LIBVIRT_URI (default ``qemu:///system``); a remote
hypervisor is ``qemu+ssh://user@host/system`` with the image and storage
folders at the same paths there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import psutil

from ..errors import (
    GuestError,
    Mismatch,
    MissingDependency,
    NotFound,
    Timeout,
    Unsupported,
    VmfError,
)
from ..guest.agent import MAX_REPLY, GuestAgent
from .. import network
from ..images import Image
from ..network import Network
from ..mounts import kill_helpers
from ..procs import ProcessId, kill, wait_exit
from ..progress import Progress
from ..spec import VMSpec
from .base import DIRTY_BITMAPS, DISK_HOTPLUG, FIRST_DATA_SLOT, MEMORY_SNAPSHOTS, NETWORK_PROFILES, DataDisk
from .qemu import (FRESHEN_PIPE, FRESHEN_PORT, PREFIX, Boot, QemuBackend, _forwarded_port, _write_json, clear_run_dir,
                   make_freshen_pipe, make_run_dir)

DEFAULT_URI = "qemu:///system"
METADATA_NS = "https://vmfixtures.invalid/domain/1"
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_HEADER = struct.Struct("<16s19I")  # magic, version, data_len, was_running, compressed, cookieOffset, unused[14]

_lock = threading.Lock()
_conns: dict[tuple[int, str], object] = {}
_stopped: dict[str, threading.Event] = {}
_agent_up: dict[str, threading.Event] = {}
_removed: dict[tuple[str, str], threading.Event] = {}  # (domain, device alias) -> set when libvirt removed it
_jobs: dict[str, threading.Event] = {}  # domain -> set when its job (a backup) completed


def uri() -> str:
    return os.environ.get("VMFIXTURES_LIBVIRT_URI") or DEFAULT_URI


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise MissingDependency("the libvirt backend needs libvirt-python: pip install 'vmfixtures[libvirt]' "
                                "(it builds against Debian's libvirt-dev and pkg-config)") from None
    return libvirt


def connection():
    """This process's connection to libvirtd, with libvirt's event loop running on a thread.

    The event implementation must be registered before the first connection opens,
    and a connection does not survive a fork: one per (process, URI)."""
    libvirt = _libvirt()
    key = (os.getpid(), uri())
    with _lock:
        conn = _conns.get(key)
        if conn is not None and conn.isAlive():
            return conn
        if not any(k[0] == os.getpid() for k in _conns):
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, args=(libvirt,), name="libvirt-events", daemon=True).start()
        libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; don't print them too
        try:
            conn = libvirt.open(key[1])
        except libvirt.libvirtError as exc:
            raise MissingDependency(f"cannot connect to libvirt at {key[1]}: {_why(exc)} (is libvirtd running? "
                                    "start it with `virtlogd -d; libvirtd -d`, or `systemctl start libvirtd`)") from None
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, _on_lifecycle, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, _on_agent, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, _on_device_removed, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, _on_job_completed, None)
        _conns[key] = conn
        return conn


def _run_events(libvirt) -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _on_lifecycle(conn, dom, event, detail, opaque) -> None:
    libvirt = _libvirt()
    if event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
        with _lock:
            waiter = _stopped.get(dom.name())
        if waiter:
            waiter.set()


def _on_agent(conn, dom, state, reason, opaque) -> None:
    if state == _libvirt().VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED:
        with _lock:
            waiter = _agent_up.get(dom.name())
        if waiter:
            waiter.set()


def _on_device_removed(conn, dom, alias, opaque) -> None:
    with _lock:
        waiter = _removed.get((dom.name(), alias))
    if waiter:
        waiter.set()


def _on_job_completed(conn, dom, params, opaque) -> None:
    with _lock:
        waiter = _jobs.get(dom.name())
    if waiter:
        waiter.set()


@contextmanager
def job_completed(domain: str):
    """An Event set when libvirt reports the domain's current job completed (register before starting it)."""
    with _lock:
        event = _jobs[domain] = threading.Event()
    try:
        yield event
    finally:
        with _lock:
            _jobs.pop(domain, None)


def _why(exc) -> str:
    return (exc.get_error_message() or str(exc)).strip().splitlines()[0]


def _unless_gone(call):
    """``call()`` on a domain handle, or None when that domain was destroyed after the handle was looked
    up (the pool evicting an idle VM, a lease ending); any other libvirt error is raised."""
    try:
        return call()
    except _libvirt().libvirtError as exc:
        if exc.get_error_code() == _libvirt().VIR_ERR_NO_DOMAIN:
            return None
        raise


def our_domains() -> list[tuple[str, str | None, str | None]]:
    """(domain, storage, VM name) of every running domain carrying the project's prefix."""
    conn = connection()
    found = []
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith(PREFIX):
            continue
        storage = name = None
        try:
            meta = ET.fromstring(dom.metadata(2, METADATA_NS))  # 2: VIR_DOMAIN_METADATA_ELEMENT
            storage, name = meta.get("storage"), meta.get("name")
        except Exception:  # noqa: BLE001 - a domain of ours without metadata is still ours (by prefix)
            pass
        found.append((dom.name(), storage, name))
    return found


class LibvirtBackend(QemuBackend):
    """VMs as libvirt domains; the folder layout and guest image are the qemu backend's."""

    name = "libvirt"
    MEMORY_FILE = "mem.save"  # a libvirt save file: header, domain XML, QEMU's migration stream
    # dirty-bitmap backups: libvirt checkpoints and push-mode backup jobs (backups/disks.py)
    capabilities = frozenset({MEMORY_SNAPSHOTS, DIRTY_BITMAPS, DISK_HOTPLUG, NETWORK_PROFILES})

    # -- the domain ------------------------------------------------------
    def domain_name(self, name: str) -> str:
        return self._meta(name)["domain"]

    def _domain(self, name: str):
        """The running domain of VM ``name``, or None (also when the VM has no record left)."""
        libvirt = _libvirt()
        meta = self._meta_or_none(name)
        if not meta or not meta.get("domain"):
            return None
        try:
            return connection().lookupByName(meta["domain"])
        except libvirt.libvirtError:
            return None

    def _record(self, vm_dir: Path, spec: VMSpec, image_key: str, image_dir: str, owner_pid: int | None,
                **extra) -> None:
        extra.setdefault("domain", f"{PREFIX}{spec.name}-{secrets.token_hex(4)}")
        extra.setdefault("uri", uri())
        super()._record(vm_dir, spec, image_key, image_dir, owner_pid, **extra)

    def domain_xml(self, name: str, net_args: list[str]) -> str:
        """The domain XML of VM ``name``, generated from its spec and folder.

        The network is QEMU arguments passed through (``net_args``, see network.py): libvirt's own
        user-mode interface is slirp, which opens the host's loopback to the guest."""
        meta = self._meta(name)
        spec = VMSpec.from_dict(meta["spec"])
        img = Image(Path(meta["image_dir"]))
        vm_dir = self.vm_dir(name).resolve()
        run = (vm_dir / "run").resolve()
        kind = "kvm" if self.accel().name == "kvm" else "qemu"
        cpu = "<cpu mode='host-passthrough'/>" if kind == "kvm" else ""
        a = quoteattr
        passed = "".join(f"<qemu:arg value={a(arg)}/>" for arg in net_args)
        return f"""<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(meta['domain'])}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <metadata><vmfx:vm xmlns:vmfx={a(METADATA_NS)} storage={a(str(self.storage.resolve()))} name={a(name)}/></metadata>
  <memory unit='KiB'>{spec.memory // 1024}</memory>
  <vcpu>{spec.cpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(img.kernel))}</kernel><initrd>{escape(str(img.initrd))}</initrd>
    <cmdline>{escape(self.accel().kernel_args(name))}</cmdline></os>
  <features><acpi/></features>{cpu}
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file={a(str(run / 'disk.qcow2'))}/><target dev='vda' bus='virtio'/></disk>
    <serial type='unix'><source mode='bind' path={a(str(run / 'console.sock'))}/>
      <log file={a(str(vm_dir / 'console.log'))} append='on'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='pipe'><source path={a(str(run / FRESHEN_PIPE))}/><target type='virtio' name={a(FRESHEN_PORT)}/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>{''.join(_disk_xml(d) for d in self.data_disks(name))}
  </devices>
  <qemu:commandline>{passed}</qemu:commandline>
</domain>"""

    # -- lifecycle -------------------------------------------------------
    def launch(self, name: str, incoming: Path | None = None) -> DomainBoot:
        """Start the VM's domain (from ``incoming``, a save file, when given) and return at once."""
        libvirt = _libvirt()
        meta = self._meta(name)
        if self.process(name):
            raise GuestError(f"VM '{name}' is already running")
        img = Image(Path(meta["image_dir"]))
        if not img.disk.exists():
            raise NotFound(f"VM '{name}' was created from image {meta['image']}, which is no longer cached "
                           f"({img.dir}); destroy and re-create the VM")
        self._check_data_disks(name)
        conn = connection()
        domain = meta["domain"]
        try:
            conn.lookupByName(domain)
            raise Mismatch(f"a libvirt domain named '{domain}' already exists and is not VM '{name}' "
                           "of this storage; left untouched")
        except libvirt.libvirtError:
            pass
        vm_dir = self.vm_dir(name)
        clear_run_dir(vm_dir)
        run = make_run_dir(vm_dir)
        _link_disk(run, vm_dir)
        make_freshen_pipe(run)
        accel = self.accel()
        spec = VMSpec.from_dict(meta["spec"])
        progress = Progress(f"vm {name}", self.quiet)
        progress.step(f"{'restoring' if incoming else 'booting'} libvirt domain {domain} "
                      f"({accel.name}, {spec.cpus} cpu, {spec.memory // 1024**2} MiB)")
        console_log = vm_dir / "console.log"
        offset = console_log.stat().st_size if console_log.exists() else 0
        try:
            net = Network(VMSpec.from_dict(meta["spec"]).network, run, name)
            # A slot libvirt's own devices (filled from the first) never reach, below the data disks'.
            xml = self.domain_xml(name, net.qemu_args(net.start(), f",bus=pci.0,addr={FIRST_DATA_SLOT - 1:#x}"))
        except BaseException:
            clear_run_dir(vm_dir)
            raise
        try:
            if incoming:
                clone = run / "restore.save"
                _clone_save_file(incoming, clone, xml)
                try:
                    conn.restoreFlags(str(clone), None, 0)
                finally:
                    clone.unlink(missing_ok=True)
            else:
                conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            clear_run_dir(vm_dir)
            raise GuestError(f"libvirt could not start VM '{name}' (domain {domain}): {_why(exc)}") from None
        pid = _qemu_pid(domain)
        info = {**pid.record(), "accel": accel.name, "accel_reason": accel.reason, "started_at": time.time(),
                "domain": domain, "uri": uri()}
        _write_json(run / "run.json", info)
        return DomainBoot(self, name, info, offset, progress, vm_dir)

    def wait_ready(self, name: str, boot):
        """The ready line on the console, then libvirt's word that the guest agent is connected
        (it serialises agent access and refuses commands before that)."""
        machine = super().wait_ready(name, boot)
        try:
            self.wait_agent(name, self.accel().scale(30))
        except BaseException as exc:
            raise boot.abandon(exc, f"VM '{name}' failed to boot") from None
        return machine

    def claim(self, name: str, spec: VMSpec, owner_pid: int | None) -> None:
        """After the pool's hand-off moved the VM's folder: point the disk link at its new place."""
        super().claim(name, spec, owner_pid)
        run = self.vm_dir(name) / "run"
        if run.is_symlink():
            _link_disk(Path(os.readlink(run)), self.vm_dir(name))

    def _load_memory(self, name: str, mem: Path) -> None:
        """libvirt restored the memory when it started the domain (launch); what is left is to wait
        until libvirt sees the guest agent's port open again (its agent lifecycle event)."""
        self.wait_agent(name, self.accel().scale(30))

    def wait_agent(self, name: str, timeout: float) -> None:
        """Block until libvirt reports the guest agent connected (live XML, else its lifecycle event)."""
        domain = self._meta(name)["domain"]
        with _lock:
            event = _agent_up.setdefault(domain, threading.Event())
        try:
            dom = self._domain(name)
            if dom is None:
                raise GuestError(f"VM '{name}' is not running")
            if "state='connected'" in dom.XMLDesc(0) or event.wait(timeout):
                return
            raise Timeout(f"VM '{name}': the guest agent did not connect within {timeout:.0f}s")
        finally:
            with _lock:
                _agent_up.pop(domain, None)

    def _ssh_port(self, name: str) -> int:
        """The host port forwarded to the guest's sshd: passt's, or the one QEMU chose for an
        isolated VM (hostfwd on port 0, in the arguments passed through)."""
        record = network.read_record(self.vm_dir(name) / "run") or {}
        if record.get("ssh_port"):
            return record["ssh_port"]
        return _forwarded_port(self._hmp(name, "info usernet"))

    def _hmp(self, name: str, command: str) -> str:
        import libvirt_qemu

        dom = self._domain(name)
        if dom is None:
            raise GuestError(f"VM '{name}' is not running")
        try:
            return libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        except _libvirt().libvirtError as exc:
            raise GuestError(f"VM '{name}': monitor command {command!r} failed: {_why(exc)}") from None

    def qmp(self, name: str, command: str, **arguments) -> object:
        """One QMP command through libvirt's monitor (libvirt owns QEMU's QMP socket)."""
        import libvirt_qemu

        dom = self._domain(name)
        if dom is None:
            raise GuestError(f"VM '{name}' is not running")
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(msg), 0))
        except _libvirt().libvirtError as exc:
            raise GuestError(f"VM '{name}': QMP {command} failed: {_why(exc)}") from None
        return reply.get("return")

    def running_accel(self, name: str) -> str:
        return "kvm" if self.qmp(name, "query-kvm")["enabled"] else "tcg"

    # -- data disks ----------------------------------------------------------
    def attach_disk(self, name: str, disk: DataDisk) -> None:
        """libvirt's attach device (live): the disk in its fixed PCI slot, as the domain XML boots it."""
        dom = self._domain(name)
        if dom is None:
            raise GuestError(f"VM '{name}' is not running")
        try:
            dom.attachDeviceFlags(_disk_xml(disk), _libvirt().VIR_DOMAIN_AFFECT_LIVE)
        except _libvirt().libvirtError as exc:  # libvirt undoes its own half-done hot-plug
            raise GuestError(f"VM '{name}': libvirt refused to attach disk '{disk.name}': {_why(exc)}") from None

    def detach_disk(self, name: str, disk: DataDisk) -> None:
        """libvirt's detach device (live), then its device-removed event: the guest ejected the disk
        and libvirt deleted QEMU's device and node. A device already gone is fine."""
        dom = self._domain(name)
        if dom is None:
            raise GuestError(f"VM '{name}' is not running")
        alias = _alias(disk)
        if alias not in self._live_aliases(dom):
            return
        key = (dom.name(), alias)
        with _lock:
            removed = _removed.setdefault(key, threading.Event())
        try:
            try:
                dom.detachDeviceAlias(alias, _libvirt().VIR_DOMAIN_AFFECT_LIVE)
            except _libvirt().libvirtError as exc:
                raise GuestError(f"VM '{name}': libvirt refused to detach disk '{disk.name}': {_why(exc)}") from None
            timeout = self.accel().scale(30)
            if not removed.wait(timeout) and alias in self._live_aliases(dom):
                raise Timeout(f"VM '{name}' did not release disk '{disk.name}' within {timeout:.0f}s "
                              "(the guest must eject it)")
        finally:
            with _lock:
                _removed.pop(key, None)

    @staticmethod
    def _live_aliases(dom) -> set[str]:
        root = ET.fromstring(dom.XMLDesc(0))
        return {a.get("name") for a in root.findall("./devices/disk/alias")}

    def block_devices(self, name: str) -> dict[str, str]:
        """The live domain XML's disks but the system disk (target vda): alias -> source file."""
        dom = self._domain(name)
        xml = _unless_gone(lambda: dom.XMLDesc(0)) if dom is not None else None
        if xml is None:
            return {}
        found = {}
        for d in ET.fromstring(xml).findall("./devices/disk"):
            target, source, alias = d.find("target"), d.find("source"), d.find("alias")
            if target is not None and target.get("dev") == "vda":
                continue
            key = alias.get("name") if alias is not None else (target.get("dev") if target is not None else "?")
            found[key] = source.get("file", "") if source is not None else ""
        return found

    def hypervisor_state(self, name: str) -> str | None:
        """What libvirt says the domain is doing ('running', 'paused', ...), None when it has no domain."""
        dom = self._domain(name)
        if dom is None:
            return None
        libvirt = _libvirt()
        state = _unless_gone(lambda: dom.state()[0])
        if state is None:
            return None
        return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
                libvirt.VIR_DOMAIN_CRASHED: "crashed"}.get(state, f"state {state}")

    def _power_button(self, name: str) -> None:
        dom = self._domain(name)
        if dom is None:
            return
        with _lock:
            _stopped[dom.name()] = threading.Event()
        try:
            dom.shutdownFlags(_libvirt().VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except _libvirt().libvirtError as exc:
            raise GuestError(f"VM '{name}': power button: {_why(exc)}") from None

    def _wait_off(self, name: str, proc: psutil.Process, deadline: float) -> bool:
        """Wait for libvirt's 'stopped' lifecycle event, then for QEMU's exit."""
        domain = self._meta(name)["domain"]
        with _lock:
            event = _stopped.get(domain)
        try:
            if event is not None and not event.wait(deadline):
                return False
            return wait_exit(proc.pid, 10.0)
        finally:
            with _lock:
                _stopped.pop(domain, None)

    @contextmanager
    def _qmp(self, name: str):
        raise Unsupported(f"VM '{name}' runs under libvirt, which owns its QMP socket (use .qmp())")
        yield

    def _force_off(self, name: str, proc: psutil.Process | None) -> None:
        dom = self._domain(name)
        if dom is not None:
            try:
                dom.destroy()
            except _libvirt().libvirtError:
                pass  # it went away on its own meanwhile
        if proc is not None and not wait_exit(proc.pid, 10.0):
            kill(proc)
        _drop_log(self._meta_or_none(name))

    def destroy(self, name: str):
        meta = self._meta_or_none(name)
        proof = super().destroy(name)
        _drop_log(meta)
        return proof

    def _agent(self, name: str, meta: dict) -> GuestAgent:
        return LibvirtAgent(self, meta["domain"])

    def evidence(self, name: str) -> dict[str, Path]:
        found = {}
        console = self.vm_dir(name) / "console.log"
        if console.is_file():
            found["serial console"] = console
        meta = self._meta_or_none(name)
        log = Path("/var/log/libvirt/qemu") / f"{meta['domain']}.log" if meta else None
        if log and log.is_file():
            found["libvirt QEMU log"] = log
        return found

    # -- memory snapshots -------------------------------------------------
    def _save_memory_and_end(self, name: str, proc: psutil.Process, mem: Path) -> None:
        dom = self._domain(name)
        try:
            dom.save(str(mem))  # pauses, writes the memory, and ends the (transient) domain
        except _libvirt().libvirtError as exc:
            raise GuestError(f"VM '{name}': libvirt could not save its memory: {_why(exc)}") from None
        if not wait_exit(proc.pid, 10.0):
            kill(proc)
        _drop_log(self._meta(name))

    def save_vm_snapshot(self, name: str, tag: str) -> Path:
        """Memory + disk as ``tag``; the VM goes on running (libvirt saves, then restores it at once)."""
        proc, dest, partial = self._new_snapshot_folder(name, tag)
        self.release(name)
        kill_helpers(self.vm_dir(name))
        try:
            self._save_memory_and_end(name, proc, partial / self.MEMORY_FILE)
            subprocess.run(["cp", "--sparse=always", str(self.vm_dir(name) / "disk.qcow2"),
                            str(partial / "disk.qcow2")], check=True, capture_output=True)
            _write_json(partial / "snapshot.json", {"tag": tag, "vm": name, "created_at": time.time(),
                                                    "spec": self._meta(name)["spec"],
                                                    "disks": self._meta(name).get("disks", [])})
            os.rename(partial, dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        finally:
            clear_run_dir(self.vm_dir(name))
        boot = self.launch(name, incoming=dest / self.MEMORY_FILE)
        self.wait_restored(name, boot, dest / self.MEMORY_FILE, personalize=False)
        return dest

    # -- sweeping ----------------------------------------------------------
    def sweep(self) -> list[str]:
        """Reap VMs of dead owners (as the qemu backend does), then stray domains."""
        return super().sweep() + self.stray_domains(destroy=True)

    def stray_domains(self, destroy: bool = False, keep: set[str] = frozenset()) -> list[str]:
        """Domains of ours whose metadata points into this storage but that no VM record here
        (nor ``keep``) claims: left by a process that died while libvirt was starting them."""
        claimed = set(keep)
        for n in self.names():
            meta = self._meta_or_none(n)
            if meta and meta.get("domain"):
                claimed.add(meta["domain"])
        storage = str(self.storage.resolve())
        found = []
        for domain, where, _ in our_domains():
            if where == storage and domain not in claimed:
                if destroy:
                    destroy_domain(domain)
                found.append(f"stray libvirt domain {domain}")
        return found


class DomainBoot(Boot):
    """A domain libvirt started, on its way to the ready line."""

    def __init__(self, backend: LibvirtBackend, name: str, info: dict, offset: int, progress: Progress,
                 vm_dir: Path):
        super().__init__(None, info, offset, progress, vm_dir)
        self._backend, self._name = backend, name
        self._pid = ProcessId(info["pid"], info["create_time"])

    def alive(self) -> bool:
        return self._pid.alive()

    def abandon(self, exc: BaseException, what: str) -> BaseException:
        exited = not self.alive()
        self._backend._force_off(self._name, self._pid.process())
        clear_run_dir(self.vm_dir)
        if not isinstance(exc, VmfError):
            return exc
        detail = str(exc)
        if exited:
            detail = f"the domain's QEMU exited: {_log_tail(self.info.get('domain'))}"
        return type(exc)(f"{what}: {detail}\n  console log: {self.vm_dir / 'console.log'}")


class LibvirtAgent(GuestAgent):
    """The guest agent through libvirt, which owns the agent's socket and serialises its users."""

    def __init__(self, backend: LibvirtBackend, domain: str):
        super().__init__(Path("/nonexistent"))
        self._backend, self._domain_name = backend, domain

    def connect(self, timeout: float = 5.0) -> None:
        pass

    def close(self) -> None:
        pass

    def session(self, timeout: float = 30.0):
        from contextlib import nullcontext

        return nullcontext(self)

    def calls(self, commands: list[tuple[str, dict]], timeout: float = 10.0) -> list[object]:
        return [self.call(command, timeout, **arguments) for command, arguments in commands]

    def call(self, command: str, timeout: float = 10.0, **arguments) -> object:
        import libvirt_qemu

        libvirt = _libvirt()
        try:
            dom = connection().lookupByName(self._domain_name)
        except libvirt.libvirtError:
            raise GuestError(f"guest agent of domain {self._domain_name}: the domain is not running") from None
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(msg), max(1, int(timeout)), 0)
        except libvirt.libvirtError as exc:
            why = _why(exc)
            if "timeout" in why.lower() or exc.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise Timeout(f"guest agent of domain {self._domain_name} did not answer {command}: {why}") from None
            raise GuestError(f"guest agent {command}: {why}") from None
        if not reply:
            return None
        if len(reply) > MAX_REPLY:
            raise GuestError(f"guest agent of domain {self._domain_name}: reply to {command} larger than "
                             f"{MAX_REPLY >> 20} MiB: refused")
        return self._parse(reply.encode()).get("return")


def destroy_domain(domain: str) -> bool:
    """Force off a running domain of ours by name; False if there was none."""
    libvirt = _libvirt()
    if not domain.startswith(PREFIX):
        raise VmfError(f"refusing to touch libvirt domain '{domain}': it is not one of ours (no '{PREFIX}' prefix)")
    try:
        dom = connection().lookupByName(domain)
        dom.destroy()
    except libvirt.libvirtError:
        return False
    _drop_log({"domain": domain, "uri": uri()})
    return True


def _alias(disk: DataDisk) -> str:
    return f"ua-{disk.device_id}"  # libvirt keeps user aliases only with the "ua-" prefix


def _disk_xml(disk: DataDisk) -> str:
    """A data disk's <disk> element: virtio, in its own PCI slot, named by an alias we choose."""
    dev = "vd" + "bcdefghijklmnopq"[disk.slot - 0x10]
    return (f"\n    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file={quoteattr(str(disk.file))}/><target dev='{dev}' bus='virtio'/>"
            f"<alias name='{_alias(disk)}'/>"
            f"<address type='pci' domain='0x0000' bus='0x00' slot='{disk.slot:#04x}' function='0x0'/></disk>")


def _link_disk(run: Path, vm_dir: Path) -> None:
    """The domain names its disk by ``<run>/disk.qcow2``, a link to the VM folder's disk.

    QEMU reopens its image by name when it drops write access (as a save does): a pooled VM's
    folder is renamed when it is handed over, so the name must outlive the rename. The socket
    folder does not move; the link is re-pointed instead (``claim``)."""
    link, tmp = run / "disk.qcow2", run / ".disk.qcow2.new"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(vm_dir).resolve() / "disk.qcow2", tmp)
    os.replace(tmp, link)


def _qemu_pid(domain: str) -> ProcessId:
    """The QEMU process libvirt started for ``domain``, found in the process table by its
    ``-name guest=<domain>`` (libvirt's own pid file is private to libvirtd)."""
    needle = f"guest={domain},"
    for proc in psutil.process_iter(["cmdline"]):
        if any(arg.startswith(needle) for arg in proc.info["cmdline"] or []):
            return ProcessId(proc.pid, proc.create_time())
    raise GuestError(f"libvirt reports domain {domain} running but no QEMU process carries its name "
                     "(a remote libvirt URI cannot be used for local VMs)")


def _clone_save_file(src: Path, dst: Path, xml: str) -> None:
    """Copy libvirt save file ``src`` to ``dst`` with ``xml`` as its domain definition.

    The header's XML area has a fixed size (libvirt pads it); the migration
    cookie follows the XML inside it. The memory stream is copied in the kernel."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        magic, *fields = SAVE_HEADER.unpack(s.read(SAVE_HEADER.size))
        if magic != SAVE_MAGIC:
            raise GuestError(f"{src} is not a libvirt save file (magic {magic!r})")
        data_len, cookie_at = fields[1], fields[4]
        data = s.read(data_len)
        cookie = data[cookie_at:].split(b"\0", 1)[0] if cookie_at else b""
        body = xml.encode() + b"\0"
        fields[4] = len(body) if cookie else 0
        body += cookie + b"\0" if cookie else b""
        if len(body) > data_len:
            raise GuestError(f"{src}: the new domain XML ({len(body)} bytes) does not fit its header ({data_len})")
        d.write(SAVE_HEADER.pack(magic, *fields) + body.ljust(data_len, b"\0"))
        size, offset = os.fstat(s.fileno()).st_size, s.tell()
        while offset < size:
            copied = os.copy_file_range(s.fileno(), d.fileno(), size - offset, offset)
            if not copied:
                break
            offset += copied


def _log_tail(domain: str | None) -> str:
    log = Path("/var/log/libvirt/qemu") / f"{domain}.log"
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-3:]
    except OSError:
        return "(no libvirt log)"
    return " / ".join(lines)


def _drop_log(meta: dict | None) -> None:
    """libvirt keeps a QEMU log per domain name; ours are unique, so remove it with the VM."""
    if meta and meta.get("domain", "").startswith(PREFIX) and not re.match(r"\w+\+ssh://", meta.get("uri", "")):
        (Path("/var/log/libvirt/qemu") / f"{meta['domain']}.log").unlink(missing_ok=True)


