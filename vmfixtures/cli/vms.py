"""`vmfixtures vm`: the lifecycle of VMs declared in a config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import errors
from ..capabilities import require_arch
from ..guest import commands
from ..client import Client
from ..spec import check_user, load_config
from ..vmlist import describe_vms
from .common import (add_config, add_json, backend_name, daemon_client, named_vms, owner_pid, storage_dir,
                     target_vms, vm_backend)


def cmd_vm_create(args) -> int:
    config = load_config(args.config)
    names = named_vms(args, config)
    specs = [config.vm(n) for n in names]  # every name is checked before anything is created
    for spec in specs:
        require_arch(spec)
    client = daemon_client()
    if client:
        return _create_remote(client, storage_dir(args), specs, backend_name(args))
    failed = None
    for result in vm_backend(args).create_many(specs, owner_pid()):
        if isinstance(result, errors.VmfError):
            failed = failed or result
            print(f"vmfixtures: error: {result}", file=sys.stderr)
        else:
            print(result.message)
    return failed.exit_code if failed else 0


def _create_remote(client: Client, storage: Path, specs, backend: str) -> int:
    """Create through the daemon, on the backend this command chose: the daemon's own default is
    its environment's, which need not be this command's."""
    lease = os.environ.get("VMFIXTURES_LEASE")
    def one(spec):
        try:
            return spec.name, client.create(storage, spec.to_dict(), lease, backend)
        except errors.VmfError as exc:
            return spec.name, exc
    failed = None
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        for name, r in pool.map(one, specs):
            if isinstance(r, errors.VmfError):
                failed = failed or r
                print(f"vmfixtures: error: {r}", file=sys.stderr)
            elif r["status"] == "exists":
                print(f"VM '{name}' already exists ({r['state']}) with the same spec; nothing to do")
            else:
                print(f"VM '{name}' created ({r['state']}, from {r['source']})")
    return failed.exit_code if failed else 0


def _boot(args, action: str, done: str) -> int:
    """start or restart, through the daemon when one runs."""
    client = daemon_client()
    driver = vm_backend(args)
    for name in target_vms(args, driver, ("stopped",) if action == "start" else ("running", "stopped")):
        if client:
            r = client.vm(action, storage_dir(args), name=name)
            accel, port = r["accel"], r["ssh_port"]
        else:
            m = getattr(driver, action)(name)
            accel, port = m.accel, m.ssh_port
        print(f"VM '{name}' {done} ({accel}, ssh 127.0.0.1:{port})")
    return 0


def cmd_vm_start(args) -> int:
    return _boot(args, "start", "running")


def cmd_vm_stop(args) -> int:
    client = daemon_client()
    driver = vm_backend(args)
    for name in target_vms(args, driver, ("running",)):
        if client:
            r = client.vm("stop", storage_dir(args), name=name, timeout=args.timeout)
            graceful, seconds = r["graceful"], r["seconds"]
        else:
            result = driver.stop(name, timeout=args.timeout)
            graceful, seconds = result.graceful, result.seconds
        how = "powered off" if graceful else "forced off after the ACPI deadline"
        print(f"VM '{name}' stopped ({how}, {seconds:.1f}s)")
    return 0


def cmd_vm_restart(args) -> int:
    return _boot(args, "restart", "restarted")


def cmd_vm_destroy(args) -> int:
    driver = vm_backend(args)
    client = daemon_client()
    for name in target_vms(args, driver, ("running", "stopped")):
        if client:
            r = client.vm("destroy", storage_dir(args), name=name)
            pid, gone, removed, leftovers = r["pid"], r["process_gone"], r["removed"], r.get("leftovers", [])
        else:
            proof = driver.destroy(name)
            pid, gone, removed, leftovers = proof.pid, proof.process_gone, len(proof.removed), proof.leftovers
        if not gone or leftovers:
            raise errors.VmfError(f"VM '{name}' not fully destroyed: process gone={gone}, left: {leftovers}")
        print(f"VM '{name}' destroyed ({f'pid {pid} gone, ' if pid else ''}{removed} files removed)")
    return 0


def cmd_vm_snapshot(args) -> int:
    snap = vm_backend(args).save_vm_snapshot(args.name, args.tag)
    print(f"VM '{args.name}' saved as snapshot '{args.tag}' ({snap})")
    return 0


def cmd_vm_snapshots(args) -> int:
    for tag in vm_backend(args).vm_snapshots(args.name):
        print(tag)
    return 0


def cmd_vm_restore(args) -> int:
    m = vm_backend(args).restore_vm_snapshot(args.name, args.tag)
    print(f"VM '{args.name}' restored to snapshot '{args.tag}' (ssh 127.0.0.1:{m.ssh_port})")
    return 0


def cmd_vm_list(args) -> int:
    rows = describe_vms(vm_backend(args))
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


def _exec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--cwd", metavar="DIR", help="absolute guest folder to run in (default: the guest agent's, /)")
    p.add_argument("--env", metavar="NAME=VALUE", action="append", help="add a variable (repeatable)")
    p.add_argument("--user", help="guest user to run as (default: the VM's user from its config, else root)")


def _split_exec(args) -> None:
    """Options written after NAME (argparse's REMAINDER keeps them in the command) parsed, and the
    command after -- kept: `vm exec web --cwd /srv -- make test`."""
    if not args.command or not args.command[0].startswith("-"):
        return
    if "--" not in args.command:
        raise errors.ConfigError("vm exec: give the command after --: vm exec NAME [OPTIONS] -- COMMAND")
    cut = args.command.index("--")
    options, args.command = args.command[:cut], args.command[cut + 1:]
    p = argparse.ArgumentParser(prog=f"vmfixtures vm exec {args.name}", add_help=False)
    _exec_options(p)
    p.parse_args(options, namespace=args)


def cmd_vm_exec(args) -> int:
    _split_exec(args)
    env = commands.parse_env(args.env)
    commands.command_argv(args.command)  # bad arguments are refused before the VM is looked up
    cwd = commands.check_folder(args.cwd)
    user = check_user(args.user, "--user") if args.user else None
    driver = vm_backend(args)
    result = commands.run(driver.machine(args.name), args.command, user=user or driver.spec(args.name).user, cwd=cwd,
                          env=env, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_code


def cmd_vm_info(args) -> int:
    from .. import network

    info = network.describe(vm_backend(args), args.name)
    print(json.dumps(info, indent=2) if args.json else network.describe_text(info))
    return 0


def register(sub):
    """The `vm` group; returns its subparsers and a helper adding a command on one named VM."""
    vm = sub.add_parser("vm", help="VM lifecycle: create, start, stop, restart, destroy, list, exec").add_subparsers(
        dest="action", required=True, metavar="ACTION")

    def named(name: str, help: str, func, all_flag: bool = False, config: bool = False):
        sp = vm.add_parser(name, help=help)
        sp.add_argument("name", nargs="?" if all_flag else None, help="VM name")
        if all_flag:
            sp.add_argument("--all", action="store_true", help="every VM declared in the config")
        if config:
            add_config(sp)
        sp.set_defaults(func=func)
        return sp

    named("create", "create and start VMs from the config (same spec again: no-op; different: error)",
          cmd_vm_create, all_flag=True, config=True)
    named("start", "boot a stopped VM and wait until it is ready", cmd_vm_start, all_flag=True, config=True)
    named("stop", "ACPI power-down with a deadline, then forced", cmd_vm_stop, all_flag=True, config=True).add_argument(
        "--timeout", type=float, help="seconds to wait for the guest to power off (default: scaled to this machine)")
    named("restart", "stop, then start", cmd_vm_restart, all_flag=True, config=True)
    named("destroy", "kill the VM and remove its disk and files", cmd_vm_destroy, all_flag=True, config=True)
    sn = named("snapshot", "save a running VM's memory and disk under a tag (it keeps running)", cmd_vm_snapshot)
    sn.add_argument("tag")
    named("snapshots", "list a VM's snapshots", cmd_vm_snapshots)
    rs = named("restore", "put a VM back to a snapshot: disk and running processes as they were", cmd_vm_restore)
    rs.add_argument("tag")
    info = named("info", "a VM's network: profile, allow-list, the guest's addresses, forwards", cmd_vm_info)
    add_json(info)
    ls = vm.add_parser("list", help="VMs in the storage folder and their state")
    add_json(ls)
    ls.set_defaults(func=cmd_vm_list)
    ex = named("exec", "run a command in the guest through the guest agent", cmd_vm_exec)
    ex.description = ("Run COMMAND in the guest and exit with its exit code, its output and error output "
                      "passed through (a command the guest cannot find exits 127). A refusal of vmfixtures "
                      "itself is one 'vmfixtures: error:' line with the exit codes of `vmfixtures --help`: "
                      "3 for a guest user or working folder the guest does not have.")
    _exec_options(ex)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    return vm, named
