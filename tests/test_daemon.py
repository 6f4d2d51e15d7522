"""The daemon's contract: bad input gets a clear 4xx error, the daemon keeps running,
no ledger row is lost; leases end when their owner dies or their TTL lapses."""

import http.client
import json
import socket
import stat
import subprocess
import sys

import pytest

from vmfixtures import errors
from vmfixtures.client import start_daemon

pytestmark = pytest.mark.vm


@pytest.fixture
def daemon(private_daemon):
    start_daemon(private_daemon.socket_path)
    return private_daemon


def raw(client, method, path, body: bytes):
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(client.socket_path))
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_socket_only_its_user_can_open(daemon):
    mode = stat.S_IMODE(daemon.socket_path.stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_bad_requests_are_4xx_and_lose_nothing(daemon):
    lease = daemon.open_lease(scope="run", ttl=None)
    assert raw(daemon, "POST", "/v1/leases", b"{not json") == (400, {"error": "request body is not valid JSON",
                                                                     "type": "ConfigError"})
    status, body = raw(daemon, "POST", "/v1/leases", b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]
    with pytest.raises(errors.NotFound, match="no lease 'nope'"):
        daemon.lease("nope")
    with pytest.raises(errors.ConfigError, match="scope: 'galaxy' is not one of"):
        daemon.open_lease(scope="galaxy")
    with pytest.raises(errors.ConfigError, match=r"spec.cpus: 999 is not a whole number of CPUs"):
        daemon.create(daemon.socket_path.parent / "vms", {"name": "big", "cpus": 999}, lease["id"])
    with pytest.raises(errors.ConfigError, match="must be an absolute path"):
        daemon.create("relative/vms", {"name": "web"}, lease["id"])
    with pytest.raises(errors.NotFound, match="unknown VM action 'explode'"):
        daemon.vm("explode", daemon.socket_path.parent / "vms", name="web")
    with pytest.raises(errors.NotFound, match="no VM named 'ghost'"):
        daemon.vm("stop", daemon.socket_path.parent / "vms", name="ghost")
    assert daemon.alive(), "the daemon must survive bad requests"
    assert [l["id"] for l in daemon.leases()] == [lease["id"]], "no ledger row may be lost"


def test_second_daemon_on_the_same_home_is_refused(daemon):
    with pytest.raises(errors.VmfError, match="already runs"):
        start_daemon(daemon.socket_path)
    r = subprocess.run([sys.executable, "-m", "vmfixtures", "daemon", "run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "a vmfixtures daemon already runs" in r.stderr
    assert daemon.alive()


def test_lease_ends_when_its_ttl_lapses(daemon):
    lease = daemon.open_lease(scope="scenario", ttl=1)
    ended = daemon.wait_lease_end(lease["id"], 10)
    assert ended["state"] == "ended" and "TTL" in ended["end_reason"]


def test_heartbeat_keeps_a_lease(daemon):
    lease = daemon.open_lease(scope="scenario", ttl=2, run_id="beating")
    for _ in range(3):
        assert daemon.wait_lease_end(lease["id"], 1.0)["state"] == "active"
        assert daemon.heartbeat(run_id="beating") == 1


def test_lease_ends_when_its_owner_dies(daemon):
    owner = subprocess.Popen(["sleep", "60"])
    lease = daemon.open_lease(scope="run", ttl=None, owner_pid=owner.pid)
    owner.kill()
    owner.wait()
    ended = daemon.wait_lease_end(lease["id"], 10)
    assert ended["state"] == "ended" and f"owner pid {owner.pid} died" in ended["end_reason"]


def test_a_daemon_started_meanwhile_by_another_process_is_used(monkeypatch, tmp_path):
    """Two runs finding no daemon at once both start one; the loser of that race uses the winner's
    (in a parallel spec run, one run's start-up met another's scenario that had just restarted it)."""
    from vmfixtures import client as client_mod
    from vmfixtures.errors import VmfError

    answers = iter([None, {"pid": 4242, "build": client_mod.build_id()}])
    monkeypatch.setattr(client_mod.Client, "alive", lambda self: next(answers))

    def lost_the_race(*args, **kwargs):
        raise VmfError("the daemon exited during start-up: a vmfixtures daemon already runs (pid 4242)")

    monkeypatch.setattr(client_mod, "start_daemon", lost_the_race)
    client, started = client_mod.ensure_daemon(tmp_path / "daemon.sock")
    assert started is None and client.socket_path == tmp_path / "daemon.sock"
