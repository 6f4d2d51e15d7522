"""qemu-guest-agent over virtio-serial: exec, files, time, without SSH.

The agent speaks JSON lines on a Unix socket QEMU exposes on the host. No
library exists for this side of it (libvirt wraps it only for its own
domains), so this is a small client: connect, resynchronise with
``guest-sync-delimited`` (the agent may hold a stale reply from an earlier
client), then one request, one reply.

QEMU serves that socket to one client at a time (others wait in the listen
backlog), so a connection is held only for one operation (an exec and its
status polls, a file transfer) and closed after: the test runner, the CLI and
the daemon's observer take turns instead of starving each other. Opening one
costs ~2 ms.

The guest is untrusted: whatever answers on its side of the channel (root in
the guest can replace qemu-ga) may send endless bytes, broken JSON or JSON of
the wrong shape. A reply is read up to ``MAX_REPLY`` bytes and a file up to
``MAX_FILE``; anything else becomes one GuestError line, never a traceback or
unbounded memory.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import GuestError, Timeout
from .result import ExecResult

CHUNK = 48 * 1024
# qemu-ga caps an exec's captured output at 16 MiB per stream; base64 makes that ~21 MiB in one reply.
# Beyond this a reply is not an agent's: the guest is flooding the channel.
MAX_REPLY = 24 * 1024**2
MAX_FILE = 64 * 1024**2  # read_file: more is refused, whatever the guest claims about end of file
# qemu-ga drops a request longer than one of its 4 KiB reads that arrives with guest-sync-delimited
# before that is answered (no answer, ever; seen about once in ten): a big first request waits for it.
PIPELINE_AFTER_SYNC_MAX = 3072
TRANSCRIPT = "qga.transcript"  # beside the socket, in the VM's folder: evidence when a scenario fails
AGENT_RELAY_SOCKET = "agent.sock"  # beside QEMU's socket: the relay that holds it (guest/relay.py)


class RefusedCommand(GuestError):
    """The agent answered a command with an error (the connection is still in step)."""


class GuestAgent:
    """A connection to one VM's guest agent socket."""

    def __init__(self, socket_path: Path):
        self.socket_path = Path(socket_path)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._sync: int | None = None  # the token of a resync whose answer is still to be read

    # -- transport -------------------------------------------------------
    def _open(self, timeout: float) -> socket.socket:
        """A connection through the VM's agent relay when one runs (it holds QEMU's socket), else to QEMU's."""
        relay = self.socket_path.with_name(AGENT_RELAY_SOCKET)
        path = relay
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(str(relay))
            except (FileNotFoundError, ConnectionRefusedError):  # no relay runs (a VM of an older build)
                path = self.socket_path
                sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise GuestError(f"guest agent socket {path}: {exc}") from None
        return sock

    def connect(self, timeout: float = 5.0) -> None:
        """Connect and ask to resynchronise; the answer is read before the first command's
        (in the same round trip: one less per connection)."""
        sock = self._open(timeout)
        self._sock, self._buf = sock, bytearray()
        self._sync = random.randint(1, 2**31)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": self._sync}})

    def _await_sync(self, deadline: float) -> None:
        while self._sync is not None:  # skip anything up to the 0xFF delimiter, then find our token
            reply = self._recv(deadline, after_delimiter=True)
            if reply.get("return") == self._sync:
                self._sync = None

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def _send(self, msg: dict) -> None:
        assert self._sock
        self._sock.sendall(json.dumps(msg).encode() + b"\n")

    def _recv(self, deadline: float, after_delimiter: bool = False) -> dict:
        """The next reply (a JSON object on one line); with ``after_delimiter``, the first after the
        0xFF that ``guest-sync-delimited`` puts before its answer (what comes before it is dropped)."""
        assert self._sock
        skipped = scanned = 0
        while True:
            if after_delimiter:
                cut = self._buf.rfind(b"\xff")
                skipped += len(self._buf) if cut < 0 else cut + 1
                del self._buf[:len(self._buf) if cut < 0 else cut + 1]
                after_delimiter = cut < 0
                if skipped > MAX_REPLY:
                    raise GuestError(f"guest agent sent over {MAX_REPLY >> 20} MiB without answering the "
                                     f"sync request ({self.socket_path}): this is not a guest agent's reply")
            if not after_delimiter:
                end = self._buf.find(b"\n", scanned)
                if end >= 0:
                    line = bytes(self._buf[:end])
                    del self._buf[:end + 1]
                    scanned = 0
                    if line.strip():
                        return self._parse(line)
                    continue
                scanned = len(self._buf)
                if scanned > MAX_REPLY:
                    raise GuestError(f"guest agent reply larger than {MAX_REPLY >> 20} MiB ({self.socket_path}): "
                                     "refused unread")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"guest agent did not answer within the deadline ({self.socket_path}; "
                              "it serves one client at a time: is another one connected?)")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise GuestError(f"guest agent closed the connection ({self.socket_path})")
            self._buf += data

    def _parse(self, line: bytes) -> dict:
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise GuestError(f"guest agent sent a malformed reply ({self.socket_path}): {line[:80]!r}")
        return reply

    @contextmanager
    def session(self, timeout: float = 30.0):
        """Hold one connection for the calls inside (nested sessions share it)."""
        if self._sock:
            yield self
            return
        self.connect(timeout)
        try:
            yield self
        finally:
            self.close()

    def call(self, command: str, timeout: float = 10.0, **arguments) -> object:
        """Run one agent command and return its ``return`` value."""
        return self.calls([(command, arguments)], timeout)[0]

    def calls(self, commands: list[tuple[str, dict]], timeout: float = 10.0) -> list[object]:
        """Send several agent commands at once, then read their answers in order (one round trip);
        the first refused one raises. Only for commands that do not need each other's answers."""
        if not self._sock:
            with self.session(timeout):
                return self.calls(commands, timeout)
        try:
            for command, arguments in commands:
                message = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
                if self._sync is not None and len(message) > PIPELINE_AFTER_SYNC_MAX:
                    self._await_sync(time.monotonic() + timeout)
                self._sock.sendall(message.encode() + b"\n")
        except OSError as exc:
            self.close()
            self._note(commands[0][0], commands[0][1], f"{type(exc).__name__}: {exc}")
            raise
        answers, refused = [], None
        for command, arguments in commands:  # every answer is read, so that the stream stays in step
            try:
                answers.append(self._answer(command, arguments, timeout))
            except RefusedCommand as exc:
                refused = refused or exc
                answers.append(None)
        if refused:
            raise refused
        return answers

    def _answer(self, command: str, arguments: dict, timeout: float) -> object:
        try:
            deadline = time.monotonic() + timeout
            self._await_sync(deadline)
            reply = self._recv(deadline)
        except (OSError, Timeout, GuestError) as exc:
            self.close()  # the stream may be out of step now; resync on next call
            self._note(command, arguments, f"{type(exc).__name__}: {exc}")
            raise
        done = reply.get("return")
        if command != "guest-exec-status" or "error" in reply or (isinstance(done, dict) and done.get("exited")):
            self._note(command, arguments, json.dumps(reply))  # an exec's unfinished status polls are left out
        if "error" in reply:
            err = reply["error"]
            raise RefusedCommand(f"guest agent {command}: "
                                 f"{err.get('desc', err) if isinstance(err, dict) else err!r}"[:300])
        return reply.get("return")

    def _note(self, command: str, arguments: dict, answer: str) -> None:
        """One line of the transcript (shortened), appended by whichever process asked."""
        line = f"{time.strftime('%H:%M:%S')} {command} {json.dumps(arguments)[:200]} -> {answer[:400]}\n"
        try:
            with open(self.socket_path.with_name(TRANSCRIPT), "a") as f:
                f.write(line)
        except OSError:
            pass  # the VM's folder is gone (destroyed meanwhile): nothing left to report on

    # -- operations ------------------------------------------------------
    def ping(self, timeout: float = 5.0) -> None:
        self.call("guest-ping", timeout=timeout)

    def exec(self, argv: list[str], input: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 60.0) -> ExecResult:
        """Run ``argv`` in the guest and wait for it; output is captured."""
        with self.session(timeout), _shaped(f"guest-exec of {argv[0]!r}"):
            return self._exec(argv, input, env, timeout)

    def _exec(self, argv, input, env, timeout) -> ExecResult:
        args: dict = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        if env:
            args["env"] = [f"{k}={v}" for k, v in env.items()]
        pid = self.call("guest-exec", timeout=timeout, **args)["pid"]
        deadline = time.monotonic() + timeout
        polls = 0
        # The agent offers no completion event; poll every 2 ms for the first ~60 ms (most commands end
        # by then: a status poll costs the guest ~0.5 ms), then with a growing interval.
        while True:
            status = self.call("guest-exec-status", timeout=timeout, pid=pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise Timeout(f"guest command {argv!r} still running after {timeout:.0f}s")
            polls += 1
            time.sleep(0.002 if polls < 30 else min(0.002 * 1.5 ** (polls - 30), 0.1))
        decode = lambda key: base64.b64decode(status.get(key, ""), validate=True).decode(errors="replace")
        code = status.get("exitcode", 128 + status.get("signal", 0))
        return ExecResult(" ".join(argv), code, decode("out-data"), decode("err-data"))

    def read_file(self, path: str, timeout: float = 30.0) -> bytes:
        with self.session(timeout), _shaped(f"reading {path}"):
            return self._read_file(path, timeout)

    def _read_file(self, path: str, timeout: float) -> bytes:
        handle = self.call("guest-file-open", timeout=timeout, path=path, mode="r")
        data = bytearray()
        try:
            while True:
                chunk = self.call("guest-file-read", timeout=timeout, handle=handle, count=CHUNK)
                data += base64.b64decode(chunk["buf-b64"], validate=True)
                if len(data) > MAX_FILE:
                    raise GuestError(f"guest file {path} is larger than {MAX_FILE >> 20} MiB: refused")
                if chunk.get("eof") or not chunk["count"]:
                    return bytes(data)
        finally:
            self.call("guest-file-close", timeout=timeout, handle=handle)

    def write_file(self, path: str, data: bytes, timeout: float = 30.0) -> None:
        with self.session(timeout), _shaped(f"writing {path}"):
            self._write_file(path, data, timeout)

    def _write_file(self, path: str, data: bytes, timeout: float) -> None:
        handle = self.call("guest-file-open", timeout=timeout, path=path, mode="w")
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        close = ("guest-file-close", {"handle": handle})
        try:
            for chunk in chunks[:-1]:
                self.call("guest-file-write", timeout=timeout, handle=handle,
                          **{"buf-b64": base64.b64encode(chunk).decode()})
            last = ("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(chunks[-1]).decode()})
        except BaseException:
            if self._sock:  # the connection is still in step: do not leave the handle open
                self.call("guest-file-close", timeout=timeout, handle=handle)
            raise
        self.calls([last, close], timeout)  # the last block and the close in one round trip

    def set_time(self, ns: int | None = None) -> None:
        """Set the guest clock (to the host's now by default): stale after a restore."""
        self.call("guest-set-time", time=ns if ns is not None else time.time_ns())


@contextmanager
def _shaped(what: str):
    """An answer of the wrong shape (a missing key, a string for a number, bad base64) is a GuestError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise GuestError(f"guest agent gave a malformed answer while {what}: {type(exc).__name__}: {exc}"[:300]) \
            from None
