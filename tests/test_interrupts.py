"""A spec run killed mid-scenario leaves no VM behind (real behave, real QEMU).

SIGTERM and SIGINT: the hooks end the leases / destroy the VMs before the
runner exits. SIGKILL: no hook runs; with the daemon, it reaps the dead
owner's lease; embedded, QEMU dies with its owner (PR_SET_PDEATHSIG). Either
way the next run reaps the folder the dead run left.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmfixtures.procs import process_alive, wait_exit
from vmfixtures.scope import RunScope

FIXTURE = Path(__file__).parent / "fixtures" / "interrupt"
pytestmark = pytest.mark.vm


@pytest.fixture(params=["daemon", "embedded"])
def mode(request, private_daemon, monkeypatch):
    if request.param == "embedded":
        monkeypatch.setenv("VMFIXTURES_DAEMON", "off")
    return request.param


def start_runner(tmp_path):
    marker = tmp_path / "vm-pid"
    env = dict(os.environ, VMFX_TEST_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "behave", "--no-capture", "-f", "plain", "features"],
                            cwd=FIXTURE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():  # the step writes the marker once the VM runs
        assert proc.poll() is None, f"runner exited early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "the VM did not come up within 120 s"
        time.sleep(0.2)
    time.sleep(0.2)  # let the step reach its sleep
    return proc, int(marker.read_text())


def runs_left(tmp_path):
    root = tmp_path / "state" / "spec-runs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_destroys_the_vms(tmp_path, mode, sig):
    proc, qemu_pid = start_runner(tmp_path)
    assert process_alive(qemu_pid)
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, "an interrupted run must not pass"
    assert wait_exit(qemu_pid, 5), f"QEMU pid {qemu_pid} survived the interrupted run:\n{out}"
    assert runs_left(tmp_path) == [], f"the run's folder was not removed:\n{out}"


def test_sigkill_kills_qemu_and_next_run_reaps(tmp_path, mode):
    proc, qemu_pid = start_runner(tmp_path)
    proc.kill()
    proc.wait(10)
    assert wait_exit(qemu_pid, 10), f"QEMU pid {qemu_pid} outlived its SIGKILLed owner ({mode})"
    assert len(runs_left(tmp_path)) == 1, "the dead run's folder is still there until reaped"
    reaped = RunScope(root=tmp_path / "state" / "spec-runs").reap_stale()
    assert len(reaped) == 1 and runs_left(tmp_path) == []
