"""`vmfixtures install-agents` and `run`: coding agents in their VMs."""

from __future__ import annotations

import sys

from .. import errors
from ..spec import load_config
from .common import add_config, vm_backend


def _agent_vm(args, config) -> str:
    if args.vm:
        config.vm(args.vm)
        return args.vm
    if len(config.vms) == 1:
        return next(iter(config.vms))
    raise errors.ConfigError(f"{config.path}: several VMs are declared; say which with --vm")


def cmd_install_agents(args) -> int:
    from .. import agents

    config = load_config(args.config)
    if args.all_agents:
        if not config.agents:
            raise errors.ConfigError(f"{config.path}: no agents declared under 'agents'")
        chosen = list(config.agents.values())
    elif args.name:
        chosen = [config.agent(args.name)]
    else:
        raise errors.ConfigError("name an agent or pass --all-agents")
    for agent in chosen:  # every artifact is checked before anything is installed
        if not agent.artifact.is_file():
            raise errors.ConfigError(f"install artifact of agent '{agent.name}' is missing: {agent.artifact}")
    vm = _agent_vm(args, config)
    machine = vm_backend(args).machine(vm)
    for agent in chosen:
        print(f"installed {agents.install(machine, agent)} in VM '{vm}'")
    return 0


def cmd_run(args) -> int:
    from .. import agents
    from ..mounts import Mounts

    config = load_config(args.config)
    agent = config.agent(args.agent)
    if args.mount:
        mount = config.mount(args.mount)
    else:
        candidates = [m for m in config.mounts if not args.vm or m.vm == args.vm]
        if not candidates:
            raise errors.ConfigError(f"{config.path}: agent runs need a mount of the project "
                                     "(add one under 'mounts')")
        mount = candidates[0]
    driver = vm_backend(args)
    machine = driver.machine(mount.vm)  # GuestError if the VM is not running
    mounts = Mounts(driver, mount.vm)
    if mounts.record(mount.target) is None:
        mounts.mount(mount.source, mount.target)
        print(f"mounted {mount.source} at {mount.vm}:{mount.target}", file=sys.stderr)
    dest = None if args.disable_backups else agents.backup_dest(config, mount)
    def progress(result):
        if result.snapshot:
            print(f"vmfixtures: backup while the agent works: {result.snapshot.name}", file=sys.stderr, flush=True)

    report = agents.run(machine, agent, mount, dest, args.args, timeout=args.timeout, on_backup=progress)
    sys.stdout.write(report.result.stdout)
    sys.stderr.write(report.result.stderr)
    if dest is None:
        print("vmfixtures: backups disabled for this run", file=sys.stderr)
    else:
        initial = report.initial.snapshot or report.initial.previous
        print(f"vmfixtures: backups in {dest}: initial snapshot {initial.name if initial else 'none'}, "
              f"{len(report.snapshots)} new snapshot(s) around the run", file=sys.stderr)
    for warning in report.warnings:
        print(f"vmfixtures: backup warning: {warning}", file=sys.stderr)
    return report.result.exit_code


def register(sub) -> None:
    ia = sub.add_parser("install-agents", help="install agents of the config into a VM from host artifacts")
    ia.add_argument("name", nargs="?", help="agent name")
    ia.add_argument("--all-agents", action="store_true", help="every agent of the config")
    ia.add_argument("--vm", help="the VM (default: the config's only VM)")
    add_config(ia)
    ia.set_defaults(func=cmd_install_agents)
    ra = sub.add_parser("run", help="run an agent in its VM, working in a mounted project folder")
    ra.add_argument("agent")
    ra.add_argument("--vm", help="the VM (default: the VM of the mount)")
    ra.add_argument("--mount", help="the mount's source (default: the first mount of the VM)")
    ra.add_argument("--disable-backups", action="store_true",
                    help="no snapshots of the folder before, during and after the run")
    ra.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    add_config(ra)
    ra.add_argument("args", nargs="*", help="arguments passed to the agent (after --)")
    ra.set_defaults(func=cmd_run)
