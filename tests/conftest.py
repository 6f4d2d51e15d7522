"""Shared fixtures. Tests that boot real VMs are marked ``vm`` and skip without QEMU."""

import shutil

import pytest

from vmfixtures.drivers.qemu import QemuDriver


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
    d = QemuDriver(storage=tmp_path / "vms", quiet=True)
    yield d
    for name in d.names():
        d.destroy(name)
