"""`vmfixtures`: build guest images and manage VMs from the shell.

Every failure prints one line (``vmfixtures: error: ...``) and exits non-zero;
the code says what kind of failure it was (see ``vmfixtures --help``). Each
command group lives in its own module with a ``register(sub)`` beside its commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import errors
from . import agents, backups, daemon, disk_backups, disks, files, forwarding, guest, images, mounts, project, report, spec, vms

EXIT_CODES = """exit codes:
  0  success                      5  a host tool is missing
  1  other failure                6  permission denied
  2  bad config or arguments      7  timed out waiting for a guest
  3  no such VM, image, guest     8  the guest or QEMU refused a request
     user or path
  4  VM exists with another spec  9  a tunnel could not be brought up
                                  10 the backend cannot do this
                                  11 in use (a disk attached to a VM)
                                  12 no space left on the destination
                                  130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmfixtures", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real VMs for executable specifications: build the guest image, then create, "
                    "start, stop and destroy VMs declared in a YAML config.",
        epilog=EXIT_CODES)
    p.add_argument("--storage", type=Path, help="folder holding VM disks and sockets "
                   "(default: $VMFIXTURES_STATE_DIR/vms or ~/.local/state/vmfixtures/vms)")
    p.add_argument("--backend", help="where new VMs run: qemu (default), libvirt or multipass "
                   "(default: $VMFIXTURES_BACKEND, else the config's defaults.backend); existing VMs "
                   "always use the backend they were created with")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND")
    images.register(sub)
    vm, named = vms.register(sub)
    disk_backups.register(vm, named)
    disks.register(sub)
    guest.register(sub)
    files.register(sub)
    mounts.register(sub)
    forwarding.register(sub)
    agents.register(sub)
    backups.register(sub)
    daemon.register(sub)
    project.register(sub)
    report.register(sub)
    spec.register(sub)
    return p


PASSTHROUGH = {"spec"}  # commands that give what follows `--` to another program as it is


def _group(argv: list[str]) -> str | None:
    """The command group named in ``argv`` (the first word that is no global option or its value)."""
    words = iter(argv)
    for word in words:
        if word in ("--storage", "--backend"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = []
    if "--" in argv and _group(argv[:argv.index("--")]) in PASSTHROUGH:
        argv, passthrough = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = build_parser().parse_args(argv)
    if getattr(args, "group", None) in PASSTHROUGH:
        args.passthrough = passthrough
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return args.func(args)
    except errors.VmfError as exc:
        print(f"vmfixtures: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vmfixtures: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
