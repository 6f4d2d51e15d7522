"""`vmfixtures`: build guest images and manage VMs from the shell.

Every failure prints one line (``vmfixtures: error: ...``) and exits non-zero;
the code says what kind of failure it was (see ``vmfixtures --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import errors, images
from .drivers import get_driver
from .drivers.qemu import QemuDriver
from .spec import load_config
from .vmlist import describe_vms

EXIT_CODES = """exit codes:
  0  success                      5  a host tool is missing
  1  other failure                6  permission denied
  2  bad config or arguments      7  timed out waiting for a guest
  3  no such VM or image          8  the guest or QEMU refused a request
  4  VM exists with another spec  130 interrupted
"""


def _driver(args) -> QemuDriver:
    return get_driver("qemu", storage=args.storage, quiet=args.quiet)


def _config_names(args, config) -> list[str]:
    if args.all:
        if not config.vms:
            raise errors.ConfigError(f"{config.path}: no VMs declared under 'vms'")
        return list(config.vms)
    if not args.name:
        raise errors.ConfigError("name a VM or pass --all")
    return [args.name]


def _owner() -> int | None:
    """Test runners set VMFIXTURES_OWNER_PID so that VMs die with them (see `gc`)."""
    value = os.environ.get("VMFIXTURES_OWNER_PID")
    return int(value) if value else None


def cmd_image_build(args) -> int:
    img = images.build(images.default_recipe(), mirror=args.mirror, force=args.force, quiet=args.quiet)
    print(img.dir)
    return 0


def cmd_image_list(args) -> int:
    rows = [img.meta | {"dir": str(img.dir)} for img in images.list_images()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}-{r['key']}  kernel {r['kernel']}  built {r['built_at']}  {r['dir']}")
        if not rows:
            print("no cached images (build one with `vmfixtures image build`)")
    return 0


def cmd_image_rm(args) -> int:
    for d in images.remove(args.ident):
        print(f"removed {d}")
    return 0


def cmd_vm_create(args) -> int:
    config = load_config(args.config)
    names = _config_names(args, config)
    specs = [config.vm(n) for n in names]  # every name is checked before anything is created
    failed = None
    for result in _driver(args).create_many(specs, _owner()):
        if isinstance(result, errors.VmfError):
            failed = failed or result
            print(f"vmfixtures: error: {result}", file=sys.stderr)
        else:
            print(result.message)
    return failed.exit_code if failed else 0


def cmd_vm_start(args) -> int:
    m = _driver(args).start(args.name)
    print(f"VM '{args.name}' running ({m.accel}, ssh 127.0.0.1:{m.ssh_port})")
    return 0


def cmd_vm_stop(args) -> int:
    r = _driver(args).stop(args.name, timeout=args.timeout)
    how = "powered off" if r.graceful else "forced off after the ACPI deadline"
    print(f"VM '{args.name}' stopped ({how}, {r.seconds:.1f}s)")
    return 0


def cmd_vm_restart(args) -> int:
    m = _driver(args).restart(args.name)
    print(f"VM '{args.name}' restarted ({m.accel}, ssh 127.0.0.1:{m.ssh_port})")
    return 0


def cmd_vm_destroy(args) -> int:
    driver = _driver(args)
    if args.all:
        config = load_config(args.config)
        names = [n for n in config.vms if driver.state(n).value != "missing"]
    else:
        if not args.name:
            raise errors.ConfigError("name a VM or pass --all")
        names = [args.name]
    for name in names:
        proof = driver.destroy(name)
        if not proof.complete:
            raise errors.VmfError(f"VM '{name}' not fully destroyed: process gone={proof.process_gone}, "
                                  f"left: {proof.leftovers}")
        pid = f"pid {proof.pid} gone, " if proof.pid else ""
        print(f"VM '{name}' destroyed ({pid}{len(proof.removed)} files removed)")
    if args.all and not names:
        print("no VM of the config exists; nothing to destroy")
    return 0


def cmd_vm_list(args) -> int:
    rows = describe_vms(_driver(args))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            port = f"ssh 127.0.0.1:{r['ssh_port']}" if r.get("ssh_port") else ""
            print(f"{r['name']:<20} {r['state']:<8} {r['cpus']} cpu {r['memory']:>5} {r['disk']:>4} "
                  f"{r.get('accel') or '':<4} {port}")
        if not rows:
            print("no VMs")
    return 0


def cmd_vm_exec(args) -> int:
    if not args.command:
        raise errors.ConfigError("give the command to run after --")
    result = _driver(args).machine(args.name).execute(args.command, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_code


def cmd_ssh(args) -> int:
    driver = _driver(args)
    m = driver.machine(args.name)
    known = driver.vm_dir(args.name) / "run" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{m.ssh_port} {m.ssh.host_key.export_public_key().decode().strip()}\n")
    argv = ["ssh", "-i", str(m.ssh.key_path), "-p", str(m.ssh_port), "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", *args.command]
    os.execvp("ssh", argv)


def cmd_console(args) -> int:
    driver = _driver(args)
    driver.spec(args.name)  # NotFound for an unknown VM
    log = driver.vm_dir(args.name) / "console.log"
    sys.stdout.write(log.read_text(errors="replace") if log.exists() else "")
    return 0


def cmd_gc(args) -> int:
    reclaimed = _driver(args).sweep()
    for line in reclaimed:
        print(f"reclaimed {line}")
    if not reclaimed:
        print("nothing to reclaim")
    return 0


def cmd_accel(args) -> int:
    a = _driver(args).accel(refresh=args.refresh)
    print(f"{a.name}: {a.reason} (probe boot {a.probe_seconds:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmfixtures", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real VMs for executable specifications: build the guest image, then create, "
                    "start, stop and destroy VMs declared in a YAML config.",
        epilog=EXIT_CODES)
    p.add_argument("--storage", type=Path, help="folder holding VM disks and sockets "
                   "(default: $VMFIXTURES_STATE_DIR/vms or ~/.local/state/vmfixtures/vms)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    img = sub.add_parser("image", help="build, list and remove cached guest images").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    b = img.add_parser("build", help="build the Debian 12 guest image (needs root; cached by recipe hash)")
    b.add_argument("--mirror", help="Debian mirror URL (default: $VMFIXTURES_MIRROR, else the host's apt sources)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.set_defaults(func=cmd_image_build)
    l = img.add_parser("list", help="list cached images")
    l.add_argument("--json", action="store_true")
    l.set_defaults(func=cmd_image_list)
    r = img.add_parser("rm", help="remove cached images by folder name, recipe name or key")
    r.add_argument("ident")
    r.set_defaults(func=cmd_image_rm)

    vm = sub.add_parser("vm", help="VM lifecycle: create, start, stop, restart, destroy, list, exec").add_subparsers(
        dest="action", required=True, metavar="ACTION")

    def named(name: str, help: str, func, all_flag: bool = False, config: bool = False):
        sp = vm.add_parser(name, help=help)
        sp.add_argument("name", nargs="?" if all_flag else None, help="VM name")
        if all_flag:
            sp.add_argument("--all", action="store_true", help="every VM declared in the config")
        if config:
            sp.add_argument("-c", "--config", default="vmfixtures.yaml", help="YAML config (default: ./vmfixtures.yaml)")
        sp.set_defaults(func=func)
        return sp

    named("create", "create and start VMs from the config (same spec again: no-op; different: error)",
          cmd_vm_create, all_flag=True, config=True)
    named("start", "boot a stopped VM and wait until it is ready", cmd_vm_start)
    named("stop", "ACPI power-down with a deadline, then forced", cmd_vm_stop).add_argument(
        "--timeout", type=float, help="seconds to wait for the guest to power off (default: scaled to this machine)")
    named("restart", "stop, then start", cmd_vm_restart)
    named("destroy", "kill the VM and remove its disk and files", cmd_vm_destroy, all_flag=True, config=True)
    ls = vm.add_parser("list", help="VMs in the storage folder and their state")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_vm_list)
    ex = named("exec", "run a command in the guest through the guest agent", cmd_vm_exec)
    ex.add_argument("--timeout", type=float, default=60.0)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")

    s = sub.add_parser("ssh", help="open an SSH session (or run a command) in a running VM")
    s.add_argument("name")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_ssh)
    c = sub.add_parser("console", help="print a VM's serial console log")
    c.add_argument("name")
    c.set_defaults(func=cmd_console)
    g = sub.add_parser("gc", help="destroy VMs whose owning test run died; kill orphan QEMU processes of ours")
    g.set_defaults(func=cmd_gc)
    a = sub.add_parser("accel", help="show the accelerator in use (KVM probe with a deadline, else TCG)")
    a.add_argument("--refresh", action="store_true", help="probe again instead of using the cached result")
    a.set_defaults(func=cmd_accel)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
