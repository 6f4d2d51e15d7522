"""Hold a VM's guest agent channel open and let clients take turns on it.

Why: qemu-ga on a virtio-serial port sees end-of-file whenever no host client
is connected, and then sleeps 100 ms before it looks again (qga/main.c,
``channel_event_cb``). A client that connects per operation (the test runner,
the CLI, the daemon's observer take turns) waited 60-100 ms extra on most
operations after a pause. This relay is the one client QEMU ever sees, from the
VM's start to its end, so the guest always has a host attached; our clients
connect to the relay's socket instead, one at a time, as they did to QEMU's.

Run as a script with the standard library only (it starts in ~20 ms)::

    python -I -S relay.py UPSTREAM_SOCKET LISTEN_FD

``LISTEN_FD``: an inherited, listening Unix socket (made by the launcher, so
clients can connect, and queue, before this process runs). It exits when QEMU
closes the upstream connection (the VM ended), removing nothing: the VM's run
folder goes with the VM. Bytes from the guest while no client is connected are
dropped; the next client resynchronises (``guest-sync-delimited``) anyway.
"""

from __future__ import annotations

import select
import socket
import sys
import time

BLOCK = 65536


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect to QEMU's agent socket (it exists before QEMU runs: the launcher made it)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def relay(upstream: socket.socket, listener: socket.socket) -> None:
    """Serve clients one at a time until the upstream (QEMU) hangs up."""
    client: socket.socket | None = None
    while True:
        watched = [upstream, client] if client else [upstream, listener]
        readable, _, _ = select.select(watched, [], [])
        if upstream in readable:
            try:
                data = upstream.recv(BLOCK)
            except OSError:  # reset: QEMU died
                data = b""
            if not data:
                return  # QEMU ended: so does the VM, and this relay
            if client:
                try:
                    client.sendall(data)
                except OSError:
                    client.close()
                    client = None
        if client and client in readable:
            try:
                data = client.recv(BLOCK)
            except OSError:
                data = b""
            if data:
                try:
                    upstream.sendall(data)
                except OSError:
                    return  # QEMU died mid-request
            else:
                client.close()
                client = None
        elif not client and listener in readable:
            client, _ = listener.accept()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: relay.py UPSTREAM_SOCKET LISTEN_FD", file=sys.stderr)
        return 2
    listener = socket.socket(fileno=int(argv[1]))
    try:
        upstream = connect(argv[0])
    except OSError as exc:
        print(f"agent relay: cannot reach QEMU's agent socket {argv[0]}: {exc}", file=sys.stderr)
        return 1
    try:
        relay(upstream, listener)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
