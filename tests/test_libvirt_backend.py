"""The libvirt backend against a real libvirtd: domains, the guest, snapshots, refusals, a remote URI.

Facts are read from libvirt itself (``virsh``) and the process table, not
from the backend's records. Skipped where libvirtd does not answer.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmfixtures import keys
from vmfixtures.backends import VMState, open_backend
from vmfixtures.capabilities import probe_libvirt
from vmfixtures.errors import Mismatch, MissingDependency
from vmfixtures.procs import process_alive
from vmfixtures.spec import VMSpec

pytestmark = [pytest.mark.vm, pytest.mark.skipif(not probe_libvirt().available, reason=probe_libvirt().reason)]


def virsh(*args: str, uri: str = "qemu:///system") -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, check=True).stdout


def running_domains() -> set[str]:
    return {line.strip() for line in virsh("list", "--name").splitlines() if line.strip()}


@pytest.fixture
def lv(tmp_path):
    backend = open_backend("libvirt", tmp_path / "vms", quiet=True)
    yield backend
    for name in backend.names():
        backend.destroy(name)


def test_lifecycle_is_visible_to_libvirt_and_leaves_nothing(lv):
    lv.create(VMSpec("web"))
    domain = lv.domain_name("web")
    assert domain in running_domains(), f"expected {domain} in `virsh list`"
    pid = lv.process_id("web")
    assert pid and process_alive(pid.pid)
    m = lv.machine("web")
    assert m.succeed("cat /proc/sys/kernel/hostname").strip() == "web"
    assert m.ssh.run("echo over-ssh").stdout.strip() == "over-ssh"
    assert lv.running_accel("web") in ("tcg", "kvm")

    result = lv.stop("web")
    assert result.graceful, "the guest should power off on the ACPI button"
    assert domain not in running_domains() and not process_alive(pid.pid)
    assert lv.state("web") == VMState.STOPPED

    lv.start("web")
    assert lv.process_id("web").pid != pid.pid
    proof = lv.destroy("web")
    assert proof.complete and not (lv.storage / "web").exists()
    assert domain not in running_domains()


def test_a_domain_destroyed_after_its_lookup_has_no_state(lv, monkeypatch):
    """The observer looks a domain up, then asks its state; a destroy in between must read as
    'no domain' (None), not fail the observer's whole pass."""
    lv.create(VMSpec("web"))
    stale = lv._domain("web")
    lv.destroy("web")
    monkeypatch.setattr(lv, "_domain", lambda name: stale)
    assert lv.hypervisor_state("web") is None
    assert lv.block_devices("web") == {}  # what the observer asks next: none, not libvirt's error


def test_clones_of_one_memory_snapshot_run_side_by_side(lv, tmp_path):
    lv.create(VMSpec("tmpl"))
    lv.machine("tmpl").succeed("echo from-template > /root/mark && sync")
    snap = lv.snapshot("tmpl", tmp_path / "snap")
    clones = []
    for name in ("c1", "c2"):
        boot = lv.create_from_snapshot(VMSpec(name), snap)
        lv.wait_restored(name, boot)
        clones.append(name)
    assert {lv.domain_name(n) for n in clones} <= running_domains()
    for name in clones:
        m = lv.machine(name)
        assert m.succeed("cat /root/mark").strip() == "from-template"
        assert m.succeed("cat /proc/sys/kernel/hostname").strip() == name
    uuids = {virsh("domuuid", lv.domain_name(n)).strip() for n in clones}
    assert len(uuids) == 2, f"each clone needs its own UUID, got {uuids}"


def test_a_domain_of_the_same_name_that_is_not_ours_is_refused_and_untouched(lv, tmp_path):
    lv.create(VMSpec("web"), start=False)
    domain = lv.domain_name("web")
    foreign = (f"<domain type='qemu'><name>{domain}</name><memory unit='MiB'>32</memory>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
    (tmp_path / "foreign.xml").write_text(foreign)
    virsh("create", str(tmp_path / "foreign.xml"))
    try:
        before = virsh("domuuid", domain).strip()
        with pytest.raises(Mismatch, match="already exists"):
            lv.start("web")
        assert virsh("domuuid", domain).strip() == before and domain in running_domains()
    finally:
        virsh("destroy", domain)
        _drop_domain_log(domain)


def test_libvirtd_not_reachable_is_one_clear_line_and_exit_5(tmp_path):
    env = dict(os.environ, VMFIXTURES_LIBVIRT_URI="qemu:///system?socket=/nonexistent/libvirt-sock",
               VMFIXTURES_STATE_DIR=str(tmp_path))
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web: {}\n")
    r = subprocess.run([sys.executable, "-m", "vmfixtures", "--backend", "libvirt", "vm", "create", "web"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == MissingDependency.exit_code, r
    assert len(r.stderr.strip().splitlines()) == 1 and "libvirtd" in r.stderr and "Traceback" not in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_sshd(tmp_path):
    """An sshd of the test's own on 127.0.0.1, accepting the installation key for root."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        pytest.skip("openssh-server is not installed (no sshd)")
    key = keys.ensure_keypair()
    folder = tmp_path / "sshd"
    folder.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host")], check=True)
    (folder / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {folder / 'host'}\nPidFile {folder / 'pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nStrictModes no\nUsePAM no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    # libvirt's ssh transport runs the ssh binary, which reads only the user's known_hosts;
    # this throwaway sshd's key is not there, so the test (loopback only) skips verification.
    yield f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={key}&no_verify=1&no_tty=1"
    proc.terminate()
    proc.wait(10)


def test_a_remote_hypervisor_is_a_libvirt_uri(loopback_sshd, tmp_path, monkeypatch):
    """qemu+ssh:// to an sshd on 127.0.0.1: the same backend, through libvirt's SSH transport."""
    monkeypatch.setenv("VMFIXTURES_LIBVIRT_URI", loopback_sshd)
    remote = open_backend("libvirt", tmp_path / "vms", quiet=True)
    try:
        remote.create(VMSpec("far"))
        domain = remote.domain_name("far")
        assert domain in {l.strip() for l in virsh("list", "--name", uri=loopback_sshd).splitlines()}
        assert remote.machine("far").succeed("echo remote-ok").strip() == "remote-ok"
    finally:
        for name in remote.names():
            remote.destroy(name)
    assert domain not in running_domains()
    _drop_domain_log(domain)  # "remote" is this host: what libvirt logged for the domain goes too


def _drop_domain_log(domain: str) -> None:
    (Path("/var/log/libvirt/qemu") / f"{domain}.log").unlink(missing_ok=True)


def test_the_observer_sees_a_domain_destroyed_behind_its_back_and_a_stray_domain(lv, tmp_path):
    """Drift staged with virsh itself: the ledger says leased, libvirt says gone; and a domain with
    the project's prefix that no ledger row holds. --fix destroys the stray, and only it."""
    import psutil

    from vmfixtures.daemon.ledger import Ledger
    from vmfixtures.observer import Observer

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        lv.create(VMSpec("web"))
        me = psutil.Process()
        lease = ledger.add_lease(me.pid, me.create_time(), "test", "scenario", None, 30)
        vm_id = ledger.add_vm(str(lv.storage), "web", VMSpec("web").to_dict(), "leased", lease_id=lease,
                              backend="libvirt")
        pid = lv.process_id("web")
        ledger.add_process(pid.pid, pid.started, vm_id)
        assert Observer(ledger, tmp_path).run().findings == [], "a healthy libvirt VM must not be drift"

        virsh("destroy", lv.domain_name("web"))
        stray = f"vmfx-stray-{os.getpid()}"
        (tmp_path / "stray.xml").write_text(
            f"<domain type='qemu'><name>{stray}</name><memory unit='MiB'>32</memory>"
            f"<metadata><vmfx:vm xmlns:vmfx='https://vmfixtures.invalid/domain/1' storage='{lv.storage.resolve()}' "
            "name='stray'/></metadata><os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
        virsh("create", str(tmp_path / "stray.xml"))
        foreign = f"not-ours-{os.getpid()}"
        (tmp_path / "foreign.xml").write_text(
            f"<domain type='qemu'><name>{foreign}</name><memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
        virsh("create", str(tmp_path / "foreign.xml"))
        try:
            report = Observer(ledger, tmp_path).run(fix=True)
            kinds = sorted((f.type, f.object) for f in report.findings)
            assert ("vm-not-running", f"VM web in {lv.storage}") in kinds, kinds
            assert ("stray-domain", f"libvirt domain {stray}") in kinds, kinds
            assert not any(foreign in f.object for f in report.findings), "a domain without our prefix is not ours"
            assert stray not in running_domains() and foreign in running_domains()
        finally:
            virsh("destroy", foreign)
            if stray in running_domains():
                virsh("destroy", stray)
            _drop_domain_log(foreign)
            _drop_domain_log(stray)
    finally:
        ledger.close()
