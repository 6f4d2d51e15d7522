"""Data disks without a VM: records, refusals, nothing half-done (the hot-plug itself is faked here;
features/disks.feature plugs real disks into real guests)."""

import json
import subprocess
from pathlib import Path

import pytest

from vmfixtures.backends import VMState
from vmfixtures.backends.base import DataDisk
from vmfixtures.backends.libvirt import _disk_xml
from vmfixtures.backends.qemu import QemuBackend
from vmfixtures.daemon.ledger import Ledger
from vmfixtures.disks import Disks, check_disk_name, free_slot, qcow2_size
from vmfixtures.errors import ConfigError, GuestError, InUse, Mismatch, NotFound


def _vm(storage: Path, name: str) -> None:
    """A VM record as the qemu backend writes it (no process: the VM is stopped)."""
    (storage / name).mkdir(parents=True)
    (storage / name / "vm.json").write_text(json.dumps({"spec": {"name": name}, "backend": "qemu"}))


@pytest.fixture
def storage(tmp_path):
    s = tmp_path / "vms"
    _vm(s, "a")
    _vm(s, "b")
    return s


def test_names_and_slots():
    assert check_disk_name("data-1") == "data-1"
    for bad in ("Data", "-x", "", "a" * 41, "a/b", None):
        with pytest.raises(ConfigError):
            check_disk_name(bad)
    assert free_slot(set()) == 0x10
    assert free_slot({0x10, 0x11, 0x13}) == 0x12
    with pytest.raises(InUse):
        free_slot(set(range(0x10, 0x20)))
    d = DataDisk("x", Path("/s/.disks/x.qcow2"), 0x11)
    assert d.device_id == "vmfx-data17" and len(d.device_id) < 32  # QEMU node names are at most 31 bytes
    assert DataDisk.from_dict(d.to_dict()) == d


def test_qcow2_size_reads_the_header(tmp_path):
    f = tmp_path / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(f), "3M"], check=True)
    assert qcow2_size(f) == 3 * 1024**2
    (tmp_path / "raw").write_bytes(b"\0" * 64)
    with pytest.raises(Exception, match="not a qcow2"):
        qcow2_size(tmp_path / "raw")


def test_create_refusals(storage):
    disks = Disks(storage)
    info = disks.create("data", "2M")
    assert info.file == storage / ".disks" / "data.qcow2" and info.size == 2 * 1024**2 and info.vm is None
    with pytest.raises(Mismatch, match="already exists"):
        disks.create("data", "2M")
    with pytest.raises(ConfigError, match="--size"):
        disks.create("tiny", "1K")
    with pytest.raises(ConfigError, match="not a size"):
        disks.create("bad", "lots")
    assert [d.name for d in disks.list()] == ["data"]  # nothing half-made by the refusals


def test_cold_attach_detach_and_remove(storage):
    disks = Disks(storage)
    disks.create("data", "1M")
    disk, how = disks.attach("data", "a")  # VM a is stopped: recorded, it boots with the disk
    assert how == "cold" and disk.slot == 0x10
    assert QemuBackend(storage).data_disks("a") == [DataDisk("data", storage / ".disks" / "data.qcow2", 0x10)]
    assert disks.attach("data", "a")[1] == "already"
    with pytest.raises(InUse, match="attached to VM 'a'"):
        disks.attach("data", "b")
    with pytest.raises(InUse, match="attached to VM 'a'"):
        disks.remove("data")
    assert disks.list()[0].vm == "a"
    assert disks.detach("data") == ("a", False)
    assert QemuBackend(storage).data_disks("a") == []
    assert disks.detach("data") == (None, False)
    path = disks.remove("data")
    assert not path.exists() and disks.list() == []


def test_unknown_disk_and_vm(storage):
    disks = Disks(storage)
    with pytest.raises(NotFound, match="no disk named 'ghost'"):
        disks.attach("ghost", "a")
    disks.create("data", "1M")
    with pytest.raises(NotFound, match="no VM named 'ghost'"):
        disks.attach("data", "ghost")
    for action in (disks.detach, disks.remove):
        with pytest.raises(NotFound, match="no disk named 'ghost'"):
            action("ghost")


def test_a_failed_hot_plug_leaves_no_record(storage, monkeypatch):
    disks = Disks(storage)
    disks.create("data", "1M")
    monkeypatch.setattr(QemuBackend, "state", lambda self, name: VMState.RUNNING)

    def refuse(self, name, disk):
        assert [d.state for d in self.data_disks(name)] == ["attaching"]  # recorded before acting
        raise GuestError("QEMU refused")

    monkeypatch.setattr(QemuBackend, "attach_disk", refuse)
    with pytest.raises(GuestError):
        disks.attach("data", "a")
    assert QemuBackend(storage).data_disks("a") == []
    assert disks.list()[0].vm is None


def test_a_failed_unplug_keeps_the_disk_attached(storage, monkeypatch):
    disks = Disks(storage)
    disks.create("data", "1M")
    disks.attach("data", "a")
    monkeypatch.setattr(QemuBackend, "state", lambda self, name: VMState.RUNNING)
    monkeypatch.setattr(QemuBackend, "detach_disk", lambda self, name, disk: (_ for _ in ()).throw(GuestError("no")))
    with pytest.raises(GuestError):
        disks.detach("data")
    assert [(d.name, d.state) for d in QemuBackend(storage).data_disks("a")] == [("data", "attached")]


def test_a_vm_whose_disk_file_is_gone_says_so_before_booting(storage):
    disks = Disks(storage)
    disks.create("data", "1M")
    disks.attach("data", "a")
    (storage / ".disks" / "data.qcow2").unlink()
    with pytest.raises(NotFound, match="detach it"):
        QemuBackend(storage)._check_data_disks("a")
    assert disks.detach("data") == ("a", False)  # a vanished disk can still be detached


class FakeQMP:
    """Answers QMP commands from a script; records what was asked."""

    def __init__(self, fail: str | None = None):
        self.calls, self.fail = [], fail

    def cmd(self, command, **args):
        from qemu.qmp import ExecuteError
        from qemu.qmp.models import ErrorResponse

        self.calls.append(command)
        if command == self.fail:
            raise ExecuteError(ErrorResponse({"error": {"class": "GenericError", "desc": "Bus 'pci.0' is full"}}),
                               command, args)
        return {}


def test_a_refused_device_add_deletes_its_block_node(tmp_path, monkeypatch):
    from contextlib import contextmanager

    qmp = FakeQMP(fail="device_add")
    backend = QemuBackend(tmp_path)
    monkeypatch.setattr(backend, "_qmp", contextmanager(lambda name: (yield qmp)))
    with pytest.raises(GuestError, match="Bus 'pci.0' is full"):
        backend.attach_disk("a", DataDisk("data", tmp_path / "d.qcow2", 0x10))
    assert qmp.calls == ["blockdev-add", "device_add", "blockdev-del"]


def _qmp_server(sock_path: Path, hang_up_on: str | None = None, stray_first: bytes = b""):
    """A QMP server on ``sock_path`` that greets, agrees to capabilities, answers each command with an
    empty return, and closes for good on ``hang_up_on``. ``stray_first`` goes out before the greeting on
    its first connection, as QEMU sends events emitted after its last client left to the next one."""
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)

    def serve():
        stray = stray_first
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by the test
            with conn:
                conn.sendall(stray + b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
                                     b'"package": ""}, "capabilities": []}}\n')
                stray = b""
                pending, decoder = "", json.JSONDecoder()
                while chunk := conn.recv(4096):  # commands come without a separator
                    pending += chunk.decode()
                    while pending.strip():
                        command, end = decoder.raw_decode(pending.lstrip())
                        pending = pending.lstrip()[end:]
                        if command["execute"] == hang_up_on:
                            return  # QEMU quit mid-exchange
                        conn.sendall(json.dumps({"return": {}, "id": command.get("id")}).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_a_qemu_that_hangs_up_mid_query_is_a_guest_error(tmp_path, storage):
    """The observer asks running VMs over QMP while others end: a VM ending then is a GuestError, which
    the observer knows to skip, not qemu.qmp's own exception (which failed a whole observer pass)."""
    (storage / "a" / "run").mkdir()
    server = _qmp_server(storage / "a" / "run" / "qmp.sock", hang_up_on="query-block")
    try:
        with pytest.raises(GuestError, match="VM 'a': QEMU closed its QMP connection"):
            QemuBackend(storage).block_devices("a")
    finally:
        server.close()


def test_events_left_for_an_earlier_client_do_not_fail_the_next_connection(storage):
    """Right after a restore's exchange hangs up, QEMU can send its migration events to the next client
    before the greeting; that connection is made again instead of failing the restore."""
    (storage / "a" / "run").mkdir()
    server = _qmp_server(storage / "a" / "run" / "qmp.sock", stray_first=b'{"event": "RESUME", "data": {}, '
                         b'"timestamp": {"seconds": 1, "microseconds": 0}}\n')
    try:
        with QemuBackend(storage)._qmp("a") as qmp:
            assert qmp.cmd("query-status") == {}
    finally:
        server.close()


def test_domain_xml_puts_each_disk_in_its_slot(tmp_path):
    d = DataDisk("data", Path("/st/.disks/da,ta.qcow2"), 0x12)
    xml = _disk_xml(d)
    assert "slot='0x12'" in xml and "<target dev='vdd' bus='virtio'/>" in xml and "ua-vmfx-data18" in xml


def test_ledger_detaches_data_disks_of_a_destroyed_vm(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    vm = ledger.add_vm("/s", "a", {"name": "a"}, "leased")
    ledger.add_disk("/s/a/disk.qcow2", vm, "overlay")
    ledger.add_data_disk("/s/.disks/data.qcow2", "data", 1024**2, None)
    ledger.disk_attached("/s/.disks/data.qcow2", vm)
    assert [d["name"] for d in ledger.data_disks(vm_id=vm)] == ["data"]
    ledger.vm_destroyed(vm)
    live = {d["path"]: d for d in ledger.live_disks()}
    assert "/s/a/disk.qcow2" not in live  # the VM's own disk went with it
    assert live["/s/.disks/data.qcow2"]["vm_id"] is None  # the data disk outlives it, detached
    ledger.remove_disk_path("/s/.disks/data.qcow2")
    ledger.add_data_disk("/s/.disks/data.qcow2", "data", 2 * 1024**2, "lease1")  # the name used again
    assert [(d["size"], d["lease_id"]) for d in ledger.data_disks(lease_id="lease1")] == [(2 * 1024**2, "lease1")]


def test_an_old_ledger_gains_the_data_disk_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE disks(path TEXT PRIMARY KEY, vm_id INTEGER, kind TEXT NOT NULL, created_at REAL NOT "
               "NULL, removed_at REAL)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    ledger.add_data_disk("/s/.disks/x.qcow2", "x", 1, None)
    assert ledger.data_disk("/s/.disks/x.qcow2")["name"] == "x"


@pytest.mark.vm
@pytest.mark.parametrize("kind", ["qemu", "libvirt"])
def test_a_real_disk_is_plugged_in_kept_across_a_restart_and_plugged_out(tmp_path, kind):
    """One real VM per backend: hot-plug, the guest's own view, a reboot with the disk, hot-unplug."""
    from vmfixtures.backends import open_backend
    from vmfixtures.capabilities import probe_libvirt
    from vmfixtures.spec import VMSpec

    if kind == "libvirt" and not probe_libvirt().available:
        pytest.skip(probe_libvirt().reason)
    backend = open_backend(kind, tmp_path / "vms", quiet=True)
    disks = Disks(tmp_path / "vms")
    try:
        backend.create(VMSpec("d"))
        disks.create("data", "8M")
        assert disks.attach("data", "d")[1] == "hot"
        m = backend.machine("d")
        assert m.wait_until_succeeds("cat /sys/block/vdb/size", timeout=30).strip() == str(8 * 1024**2 // 512)
        assert list(backend.block_devices("d").values()) == [str(tmp_path / "vms" / ".disks" / "data.qcow2")]
        backend.stop("d")
        backend.start("d")  # the record brings the disk back at boot
        assert "vdb" in backend.machine("d").succeed("ls /sys/block").split()
        assert disks.detach("data") == ("d", True)
        assert backend.machine("d").succeed("ls /sys/block").split() == ["vda"]
        assert backend.block_devices("d") == {}
    finally:
        for name in backend.names():
            backend.destroy(name)
    assert disks.list()[0].vm is None  # destroying the VM detached nothing it still had; the disk stays
