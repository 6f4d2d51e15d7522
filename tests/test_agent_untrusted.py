"""The guest agent client against an agent that lies: root in the guest can answer in qemu-ga's place.
A fake agent on a Unix socket plays the guest (unit test; the feature does it with a real VM)."""

import json
import re
import socket
import threading

import pytest

from vmfixtures.errors import GuestError
from vmfixtures.guest import agent as agent_module
from vmfixtures.guest.agent import GuestAgent


def _fake_agent(path, answer):
    """Serve one client: answer the sync request properly, then ``answer(request, conn)`` per request."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        f = conn.makefile("rb")
        try:
            for line in f:
                req = json.loads(line)
                if req["execute"] == "guest-sync-delimited":
                    conn.sendall(b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
                else:
                    answer(req, conn)
        except OSError:
            pass
        finally:
            conn.close()
            srv.close()

    threading.Thread(target=serve, daemon=True).start()


def _hwm_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def test_endless_reply_is_refused_with_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_module, "MAX_REPLY", 4 * 1024**2)

    def flood(req, conn):
        chunk = b"A" * 65536
        while True:
            conn.sendall(chunk)

    _fake_agent(tmp_path / "qga.sock", flood)
    open("/proc/self/clear_refs", "w").write("5")
    before = _hwm_kib()
    with pytest.raises(GuestError, match="larger than 4 MiB"):
        GuestAgent(tmp_path / "qga.sock").exec(["true"], timeout=30)
    assert _hwm_kib() - before < 16 * 1024, "reading a flood cost more than 16 MiB"


@pytest.mark.parametrize("reply", [b"{not json\n", b"[1, 2]\n", b'"just a string"\n', b"\x00\x01\x02\n"])
def test_malformed_reply_is_one_line(tmp_path, reply):
    _fake_agent(tmp_path / "qga.sock", lambda req, conn: conn.sendall(reply))
    with pytest.raises(GuestError, match="malformed reply") as exc:
        GuestAgent(tmp_path / "qga.sock").exec(["true"], timeout=10)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("answer", [{"return": {"pid": "x"}}, {"return": 7}, {"return": {}},
                                    {"error": "not a mapping"}])
def test_answer_of_the_wrong_shape_is_a_guest_error(tmp_path, answer):
    def reply(req, conn):
        if req["execute"] == "guest-exec":
            conn.sendall(json.dumps(answer).encode() + b"\n")
        else:
            conn.sendall(json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": "!!!"}}).encode() + b"\n")

    _fake_agent(tmp_path / "qga.sock", reply)
    with pytest.raises(GuestError):
        GuestAgent(tmp_path / "qga.sock").exec(["true"], timeout=10)


def test_endless_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_module, "MAX_FILE", 1024**2)

    def reply(req, conn):
        ret = {"guest-file-open": 1, "guest-file-close": {},
               "guest-file-read": {"count": 49152, "buf-b64": "QUFB" * 16384, "eof": False}}[req["execute"]]
        conn.sendall(json.dumps({"return": ret}).encode() + b"\n")

    _fake_agent(tmp_path / "qga.sock", reply)
    with pytest.raises(GuestError, match="larger than 1 MiB"):
        GuestAgent(tmp_path / "qga.sock").read_file("/etc/motd")


def test_no_sync_answer_in_a_flood_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(agent_module, "MAX_REPLY", 1024**2)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "qga.sock"))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        try:
            while True:
                conn.sendall(b"B" * 65536)
        except OSError:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(GuestError, match="without answering the sync request"):
        GuestAgent(tmp_path / "qga.sock").ping()
    srv.close()
