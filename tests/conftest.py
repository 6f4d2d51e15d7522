"""Shared fixtures. Tests that boot real VMs are marked ``vm`` and skip without QEMU."""

import shutil

import pytest

from vmfixtures.backends.qemu import QemuBackend


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots real QEMU VMs (skipped when QEMU is missing)")


def pytest_collection_modifyitems(config, items):
    if shutil.which("qemu-system-x86_64") and shutil.which("qemu-img"):
        return
    skip = pytest.mark.skip(reason="QEMU is not installed (qemu-system-x86_64/qemu-img not found)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def driver(tmp_path):
    """A QEMU driver on a private storage folder; every VM is destroyed afterwards."""
    d = QemuBackend(storage=tmp_path / "vms", quiet=True)
    yield d
    for name in d.names():
        d.destroy(name)


@pytest.fixture
def private_daemon(tmp_path, monkeypatch):
    """Environment for a daemon of the test's own (socket, ledger, pool); stopped and checked afterwards."""
    from vmfixtures.client import Client
    from vmfixtures.backends.qemu import our_qemu_processes
    from vmfixtures.procs import wait_exit

    monkeypatch.setenv("VMFIXTURES_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VMFIXTURES_DAEMON_SOCKET", str(tmp_path / "d.sock"))
    client = Client(tmp_path / "d.sock")
    yield client
    health = client.alive()
    if health:
        client.shutdown()
        assert wait_exit(health["pid"], 60.0), "the test's daemon did not stop"
    left = our_qemu_processes(tmp_path)
    for proc in left:
        proc.kill()
    assert not left, f"QEMU processes of the test's daemon survived it: {[p.pid for p in left]}"
