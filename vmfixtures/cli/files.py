"""`vmfixtures cp`: copy a file between the host and a VM's guest, in either direction."""

from __future__ import annotations

from pathlib import Path

from ..errors import Unsupported
from ..spec import check_user
from .common import vm_backend


def cmd_cp(args) -> int:
    from ..guest.files import download, host_source, parse_pair, upload  # SFTP: asyncssh, slow to import
    src, dst = parse_pair(args.src, args.dst)
    vm = src.vm or dst.vm
    if dst.vm:
        host_source(Path(src.path))  # the host side first: nothing is asked of a VM for a file that is not there
    driver = vm_backend(args, vm)
    user = check_user(args.user, "--user") if args.user else driver.spec(vm).user  # NotFound for an unknown VM
    machine = driver.machine(vm)
    if not machine.ssh_port:
        raise Unsupported(f"VM '{vm}' has no SSH port forward ({driver.name} backend), which cp copies over")
    if dst.vm:
        written, size = upload(machine, Path(src.path), dst.path, user, timeout=args.timeout)
        print(f"copied {src.path} -> {vm}:{written} ({size} bytes)")
    else:
        written, size = download(machine, src.path, dst.path, user, timeout=args.timeout)
        print(f"copied {vm}:{src.path} -> {written} ({size} bytes)")
    return 0


def register(sub) -> None:
    cp = sub.add_parser(
        "cp", help="copy a file between the host and a VM (VM:/path names the guest side)",
        description="Copy one file into a running VM or out of it, keeping its mode; streamed over SFTP, "
                    "written under a temporary name and renamed, so the target is never half-written. "
                    "DST may be an existing folder (the file keeps its name) or a file in an existing "
                    "folder; a folder that does not exist is refused. Folders are not copied (mount them). "
                    "A host path that starts like 'name:' is written './name:...'.")
    cp.add_argument("src", metavar="SRC", help="host path or VM:/path")
    cp.add_argument("dst", metavar="DST", help="host path or VM:/path")
    cp.add_argument("--user", help="the guest user who owns (into the VM) or must be able to read (out of "
                    "it) the guest file (default: the VM's user from its config, else root)")
    cp.add_argument("--timeout", type=float, default=3600.0, help="seconds before the copy is abandoned")
    cp.set_defaults(func=cmd_cp)
