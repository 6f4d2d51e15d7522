"""The observer on its own ledger, against real QEMU: drift that the spec cannot stage through the daemon."""

import os

import psutil
import pytest

from vmfixtures.daemon.ledger import Ledger
from vmfixtures.procs import process_alive
from vmfixtures.observer import Observer
from vmfixtures.spec import VMSpec

pytestmark = pytest.mark.vm


@pytest.fixture
def ledger(tmp_path):
    db = Ledger(tmp_path / "ledger.sqlite")
    yield db
    db.close()


def _leased_vm(driver, ledger, name="web"):
    driver.create(VMSpec(name))
    me = psutil.Process()
    lease = ledger.add_lease(me.pid, me.create_time(), "test", "scenario", None, 30)
    vm_id = ledger.add_vm(str(driver.storage), name, VMSpec(name).to_dict(), "leased", lease_id=lease)
    info = driver.run_info(name)
    ledger.add_process(info["pid"], info["create_time"], vm_id)
    return lease, info["pid"]


def test_a_vm_alive_after_its_lease_ended_is_reported_and_fixed(driver, ledger, tmp_path):
    lease, pid = _leased_vm(driver, ledger)
    assert Observer(ledger, tmp_path).run().findings == [], "a healthy leased VM must not be drift"
    ledger.end_lease(lease, "expired")  # ... and the reaper never got to it
    report = Observer(ledger, tmp_path).run(fix=True)
    assert [f.type for f in report.findings] == ["lease-expired-alive"], report.findings
    assert f"pid {pid}" in report.findings[0].evidence and "expired" in report.findings[0].evidence
    assert report.fixed == ["destroyed web (its lease had ended)"]
    assert not process_alive(pid) and driver.state("web").value == "missing"
    assert Observer(ledger, tmp_path).run().findings == []


def test_a_tunnel_whose_pid_was_reused_is_down(driver, ledger, tmp_path):
    _, _ = _leased_vm(driver, ledger)
    me = psutil.Process()
    row = ledger.find_vm(str(driver.storage), "web")
    alive = ledger.add_tunnel(row["id"], "local", "127.0.0.1:18080", "127.0.0.1:80", me.pid, me.create_time())
    reused = ledger.add_tunnel(row["id"], "local", "127.0.0.1:18081", "127.0.0.1:81", os.getpid(),
                               me.create_time() - 1000)  # same pid, another start time: not the same process
    report = Observer(ledger, tmp_path).run(fix=True)
    assert [(f.type, f.object.split()[1]) for f in report.findings] == [("tunnel-down", str(reused))], report.findings
    assert [t["id"] for t in ledger.live_tunnels()] == [alive]
