"""The QEMU driver against real QEMU: what it promises about processes and files."""

import os
import subprocess

import pytest

from vmfixtures.backends import VMState
from vmfixtures.backends import accel as accel_mod
from vmfixtures.backends import qemu
from vmfixtures.errors import GuestError, Mismatch, MissingDependency, NotFound, Timeout
from vmfixtures.spec import VMSpec

pytestmark = pytest.mark.vm


def test_mismatch_leaves_the_running_vm_untouched(driver):
    driver.create(VMSpec("web"))
    pid = driver.run_info("web")["pid"]
    with pytest.raises(Mismatch) as exc:
        driver.create(VMSpec("web", cpus=2, disk=3 * 1024**3))
    assert "cpus: existing 1, requested 2" in str(exc.value)
    assert "disk: existing 2G, requested 3G" in str(exc.value)
    assert driver.run_info("web")["pid"] == pid and driver.state("web") == VMState.RUNNING
    assert driver.spec("web") == VMSpec("web")
    assert driver.create(VMSpec("web")).status == "exists"


def test_destroy_proves_process_and_files_gone(driver):
    driver.create(VMSpec("web"))
    vm_dir, pid = driver.vm_dir("web"), driver.run_info("web")["pid"]
    sockets = (vm_dir / "run").resolve()
    proof = driver.destroy("web")
    assert proof.complete and proof.pid == pid and not qemu.process_alive(pid)
    assert any(f.endswith("disk.qcow2") for f in proof.removed)
    assert not vm_dir.exists() and not sockets.exists()
    with pytest.raises(NotFound):
        driver.destroy("web")


def test_guest_that_ignores_acpi_is_forced_off(driver):
    m = driver.create(VMSpec("web")) and driver.machine("web")
    m.succeed("busybox killall acpid")  # nothing listens to the power button any more
    result = driver.stop("web", timeout=2)
    assert not result.graceful and driver.state("web") == VMState.STOPPED
    assert not qemu.our_qemu_processes(driver.storage)


def test_guest_files_and_exit_codes(driver):
    driver.create(VMSpec("web"))
    m = driver.machine("web")
    m.write_file("/root/data.bin", bytes(range(256)) * 1000)
    assert m.read_file("/root/data.bin") == bytes(range(256)) * 1000
    r = m.execute("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(GuestError, match="exited 3"):
        m.succeed("exit 3")
    assert m.ssh.run("hostname").stdout.strip() == "web"
    for i in range(30):  # a first request bigger than qemu-ga's 4 KiB read, on a fresh connection each time:
        # sent with the resync, about one in ten was dropped and never answered
        r = m.execute(["sh", "-c", 'printf %s "$1" | wc -c', "sh", "x" * 20000], timeout=20)
        assert (r.exit_code, r.stdout.strip()) == (0, "20000"), f"call {i}: {r.describe()}"


def test_ssh_answers_at_the_ready_line_and_each_connection_has_its_own_sshd(driver):
    """Port 22 listens before the ready line (no retry here: a reset would raise), and a burst of
    connections right after boot is accepted at once, each served by its own sshd."""
    from concurrent.futures import ThreadPoolExecutor

    driver.create(VMSpec("web"))
    m = driver.machine("web")
    assert m.ssh.run_once("hostname").stdout.strip() == "web"
    sleeping = "sleep 3; echo done"
    with ThreadPoolExecutor(8) as pool:
        burst = [pool.submit(m.ssh.run_once, sleeping) for _ in range(8)]
        sessions = ""
        for _ in range(50):  # the guest's process table while the eight sessions sleep
            sessions = m.succeed(["ps", "-o", "pid,args"])
            if sessions.count("sshd: root@notty") >= 8:
                break
        outputs = [f.result().stdout.strip() for f in burst]
    assert outputs == ["done"] * 8, outputs
    assert sessions.count("sshd: root@notty") >= 8, f"expected eight SSH sessions in the guest, saw:\n{sessions}"
    listening = m.succeed(["ss", "-Hltnp", "sport = :22"])
    assert "vmf-ssh-socket" in listening and "sshd" not in listening, f"port 22 held by: {listening}"
    # The boot script goes on only once the port listens: the listener (forked after listen) is older
    # than the guest agent, which the script starts next.
    pids = {comm: int(pid) for pid, comm in (l.split() for l in m.succeed(["ps", "-eo", "pid=,comm="]).splitlines())
            if comm in ("vmf-ssh-socket", "qemu-ga")}
    assert pids.get("vmf-ssh-socket", 1 << 30) < pids.get("qemu-ga", 0), f"listener and agent pids: {pids}"


def test_a_taken_ssh_port_launches_the_vm_again_with_another(driver, monkeypatch):
    """QEMU and passt start side by side; when the port chosen for SSH is taken before passt binds it,
    that QEMU and passt go and the VM starts again on another port."""
    import socket

    from vmfixtures import network

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    chosen = []
    real_free_port = network._free_port
    monkeypatch.setattr(network, "_free_port", lambda: chosen.append(taken if not chosen else real_free_port())
                        or chosen[-1])
    try:
        driver.create(VMSpec("web"))
        port = driver.run_info("web")["ssh_port"]
        assert chosen[0] == taken and port == chosen[-1] != taken, (chosen, port)
        assert driver.machine("web").ssh.run_once("hostname").stdout.strip() == "web"
        assert len(qemu.our_qemu_processes(driver.storage)) == 1
        serving = [folder for _, folder in network.our_passts(qemu.runtime_root())
                   if folder == (driver.vm_dir("web") / "run").resolve()]
        assert len(serving) == 1, f"expected one passt for the VM, saw {serving}"
    finally:
        held.close()


def test_failed_boot_leaves_nothing(driver, monkeypatch):
    driver.accel()
    monkeypatch.setattr(driver._accel, "scale", lambda base: 0.5)  # no guest is ready in half a second
    with pytest.raises(Timeout, match="failed to boot"):
        driver.create(VMSpec("web"))
    assert driver.state("web") == VMState.MISSING and not driver.vm_dir("web").exists()
    assert not qemu.our_qemu_processes(driver.storage) and not qemu.run_dirs_of(driver.storage)


def test_sweep_reaps_vms_of_dead_owners_and_orphan_qemu(driver):
    owner = subprocess.Popen(["sleep", "60"])
    driver.create(VMSpec("web"), owner_pid=owner.pid)
    pid = driver.run_info("web")["pid"]
    driver.create(VMSpec("db"))
    orphan_pid = driver.run_info("db")["pid"]
    (driver.vm_dir("db") / "run" / "run.json").unlink()  # the ledger forgets this QEMU
    owner.kill()
    owner.wait()
    reclaimed = driver.sweep()
    assert any("vm web" in r for r in reclaimed) and any(f"orphan QEMU pid {orphan_pid}" in r for r in reclaimed)
    assert not qemu.process_alive(pid) and not qemu.process_alive(orphan_pid)
    assert driver.state("web") == VMState.MISSING


def test_accelerator_choice_is_explained(driver, monkeypatch):
    img = driver.image()
    forced = accel_mod._probe(img.kernel, img.initrd, "tcg")
    assert forced.name == "tcg" and "forced" in forced.reason and forced.probe_seconds > 0
    with pytest.raises(MissingDependency, match="use 'kvm' or 'tcg'"):
        accel_mod._probe(img.kernel, img.initrd, "hvf")
    chosen = driver.accel()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert chosen.name == "tcg" and "/dev/kvm" in chosen.reason
