"""`vmfixtures ssh`, `shell` and `console`: reach a running VM's guest."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from .common import vm_or_lease


def cmd_ssh(args) -> int:
    driver, name = vm_or_lease(args)
    m = driver.machine(name)
    known = driver.known_hosts(name)
    argv = ["ssh", "-i", str(m.ssh.key_path), "-p", str(m.ssh_port), "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", *args.command]
    os.execvp("ssh", argv)


def cmd_console(args) -> int:
    driver, name = vm_or_lease(args)
    driver.spec(name)  # NotFound for an unknown VM
    log = driver.vm_dir(name) / "console.log"
    if log.exists():  # copied a chunk at a time: the guest decides how big this log is
        sys.stdout.flush()
        with open(log, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, 1024 * 1024)
        sys.stdout.buffer.flush()
    return 0


def register(sub) -> None:
    s = sub.add_parser("ssh", help="open an SSH session (or run a command) in a running VM")
    s.add_argument("name", help="VM name, or a daemon lease id")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_ssh)
    sh = sub.add_parser("shell", help="an interactive shell in a running VM (commands from stdin when it is no terminal)")
    sh.add_argument("name", help="VM name, or a daemon lease id")
    sh.set_defaults(func=cmd_ssh, command=[])
    c = sub.add_parser("console", help="print a VM's serial console log")
    c.add_argument("name", help="VM name, or a daemon lease id")
    c.set_defaults(func=cmd_console)
