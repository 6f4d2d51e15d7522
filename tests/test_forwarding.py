"""The forwarder against a real VM: failures leave no ssh behind, and its tunnels die with it."""

import os
import signal
import subprocess
import sys

import pytest

from vmfixtures.procs import process_alive, wait_exit
from vmfixtures.forwarding import Forwarder, TunnelError
from vmfixtures.spec import Endpoint, ForwardSpec, VMSpec
from vmfixtures import forwarding
from vmfixtures.testkit import HostServer, serve_in_guest

pytestmark = pytest.mark.vm


def _ssh_children(pid):
    import psutil

    return [p for p in psutil.Process(pid).children() if p.name() == "ssh"]


def test_a_remote_port_busy_in_the_guest_is_refused_and_leaves_no_ssh(driver):
    driver.create(VMSpec("web"))
    serve_in_guest(driver.machine("web"), 9000, "taken")
    spec = ForwardSpec("web", "remote", Endpoint("127.0.0.1", 19999), Endpoint("127.0.0.1", 9000))
    with pytest.raises(TunnelError, match="remote port forwarding failed"):
        Forwarder(driver, [spec], say=lambda line: None).start()
    assert not _ssh_children(os.getpid()), "the failed tunnel's ssh is still running"


def test_tunnels_die_with_a_sigkilled_forwarder(driver, tmp_path):
    driver.create(VMSpec("web"))
    config = tmp_path / "vmfixtures.yaml"
    config.write_text("vms:\n  web: {}\nforwards:\n"
                      "  - {vm: web, kind: local, host: 18091, guest: 8000}\n"
                      "  - {vm: web, kind: socks5, host: 11091}\n")
    env = dict(os.environ, VMFIXTURES_DAEMON="off")
    proc = subprocess.Popen([sys.executable, "-m", "vmfixtures", "--storage", str(driver.storage), "portforward",
                             "-c", str(config)], stdout=subprocess.PIPE, text=True, env=env)
    lines = [proc.stdout.readline() for _ in range(3)]
    assert lines[2].startswith("forwarding 2 tunnel(s)"), lines
    ssh = [int(l.rsplit("ssh pid ", 1)[1].rstrip(")\n")) for l in lines[:2]]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(wait_exit(pid, 10.0) for pid in ssh), f"tunnel ssh outlived its forwarder: " \
                                                      f"{[p for p in ssh if process_alive(p)]}"


def test_a_host_port_taken_after_its_check_is_not_reported_up(driver, monkeypatch):
    # Another listener on the port (taken between the check and ssh's bind) answers connections too:
    # only the tunnel's own ssh listening makes the tunnel up.
    driver.create(VMSpec("web"))
    monkeypatch.setattr(forwarding, "port_free", lambda addr, port: True)
    other = HostServer(18092, "someone else")
    try:
        spec = ForwardSpec("web", "local", Endpoint("127.0.0.1", 18092), Endpoint("127.0.0.1", 8000))
        with pytest.raises(TunnelError, match="ssh exited"):
            Forwarder(driver, [spec], say=lambda line: None).start()
    finally:
        other.stop()
    assert not _ssh_children(os.getpid()), "the failed tunnel's ssh is still running"
