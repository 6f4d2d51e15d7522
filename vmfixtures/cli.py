"""`vmfixtures`: build guest images and manage VMs from the shell.

Every failure prints one line (``vmfixtures: error: ...``) and exits non-zero;
the code says what kind of failure it was (see ``vmfixtures --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import errors, images, paths
from .client import Client, Heartbeat, start_daemon
from .backends import Backend, backend_for, chosen, open_backend, recorded_backend
from .files import write_atomically
from .spec import load_config
from .vmlist import describe_vms

EXIT_CODES = """exit codes:
  0  success                      5  a host tool is missing
  1  other failure                6  permission denied
  2  bad config or arguments      7  timed out waiting for a guest
  3  no such VM or image          8  the guest or QEMU refused a request
  4  VM exists with another spec  9  a tunnel could not be brought up
                                  10 the backend cannot do this
                                  130 interrupted
"""


def _backend_name(args) -> str:
    """--backend, else $VMFIXTURES_BACKEND, else the config's defaults.backend, else qemu."""
    if args.backend:
        return chosen(args.backend, "--backend")
    if not os.environ.get("VMFIXTURES_BACKEND") and getattr(args, "config", None) and Path(args.config).is_file():
        configured = load_config(args.config).backend
        if configured:
            return configured
    return chosen()


def _driver(args, name: str | None = None) -> Backend:
    """The backend VM ``name`` (default: the command's VM) was created with; for new VMs, the chosen one."""
    name = name or getattr(args, "name", None)
    storage = Path(args.storage) if args.storage else None
    if name and storage is not None and recorded_backend(storage / name):
        return backend_for(storage, name, quiet=args.quiet)
    backend = open_backend(_backend_name(args), storage, quiet=args.quiet)
    if name and recorded_backend(backend.storage / name):
        return backend_for(backend.storage, name, quiet=args.quiet)
    return backend


def _config_names(args, config) -> list[str]:
    if args.all:
        if not config.vms:
            raise errors.ConfigError(f"{config.path}: no VMs declared under 'vms'")
        return list(config.vms)
    if not args.name:
        raise errors.ConfigError("name a VM or pass --all")
    return [args.name]


def _remote() -> Client | None:
    """The running daemon's client, unless VMFIXTURES_DAEMON=off or none answers."""
    if os.environ.get("VMFIXTURES_DAEMON", "").lower() in ("off", "0", "no"):
        return None
    client = Client()
    return client if client.alive() else None


def _storage(args) -> Path:
    return Path(args.storage or paths.vms_dir()).absolute()


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
    client = _remote()
    if client:
        return _create_remote(client, _storage(args), specs)
    failed = None
    for result in _driver(args).create_many(specs, _owner()):
        if isinstance(result, errors.VmfError):
            failed = failed or result
            print(f"vmfixtures: error: {result}", file=sys.stderr)
        else:
            print(result.message)
    return failed.exit_code if failed else 0


def _create_remote(client: Client, storage: Path, specs) -> int:
    lease = os.environ.get("VMFIXTURES_LEASE")
    def one(spec):
        try:
            return spec.name, client.create(storage, spec.to_dict(), lease)
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


def _targets(args, driver, states: tuple[str, ...]) -> list[str]:
    """The VM named on the command line, or with --all every VM of the config in one of ``states``."""
    if not args.all:
        if not args.name:
            raise errors.ConfigError("name a VM or pass --all")
        return [args.name]
    config = load_config(args.config)
    names = [n for n in config.vms if driver.state(n).value in states]
    if not names:
        print(f"no VM of the config is {' or '.join(states)}; nothing to do")
    return names


def _boot(args, action: str, done: str) -> int:
    """start or restart, through the daemon when one runs."""
    client = _remote()
    driver = _driver(args)
    for name in _targets(args, driver, ("stopped",) if action == "start" else ("running", "stopped")):
        if client:
            r = client.vm(action, _storage(args), name=name)
            accel, port = r["accel"], r["ssh_port"]
        else:
            m = getattr(driver, action)(name)
            accel, port = m.accel, m.ssh_port
        print(f"VM '{name}' {done} ({accel}, ssh 127.0.0.1:{port})")
    return 0


def cmd_vm_start(args) -> int:
    return _boot(args, "start", "running")


def cmd_vm_stop(args) -> int:
    client = _remote()
    driver = _driver(args)
    for name in _targets(args, driver, ("running",)):
        if client:
            r = client.vm("stop", _storage(args), name=name, timeout=args.timeout)
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
    driver = _driver(args)
    client = _remote()
    for name in _targets(args, driver, ("running", "stopped")):
        if client:
            r = client.vm("destroy", _storage(args), name=name)
            pid, gone, removed, leftovers = r["pid"], r["process_gone"], r["removed"], r.get("leftovers", [])
        else:
            proof = driver.destroy(name)
            pid, gone, removed, leftovers = proof.pid, proof.process_gone, len(proof.removed), proof.leftovers
        if not gone or leftovers:
            raise errors.VmfError(f"VM '{name}' not fully destroyed: process gone={gone}, left: {leftovers}")
        print(f"VM '{name}' destroyed ({f'pid {pid} gone, ' if pid else ''}{removed} files removed)")
    return 0


def cmd_vm_snapshot(args) -> int:
    snap = _driver(args).save_vm_snapshot(args.name, args.tag)
    print(f"VM '{args.name}' saved as snapshot '{args.tag}' ({snap})")
    return 0


def cmd_vm_snapshots(args) -> int:
    for tag in _driver(args).vm_snapshots(args.name):
        print(tag)
    return 0


def cmd_vm_restore(args) -> int:
    m = _driver(args).restore_vm_snapshot(args.name, args.tag)
    print(f"VM '{args.name}' restored to snapshot '{args.tag}' (ssh 127.0.0.1:{m.ssh_port})")
    return 0


def cmd_vm_backup(args) -> int:
    from .backups import disks

    link = disks.backup(_driver(args), args.name, Path(args.dest).absolute(), full=args.full, group_by=args.group_by)
    print(f"{link['kind']} backup of VM '{args.name}': {link['file']} ({link['bytes'] / 1024**2:.1f} MiB)")
    return 0


def cmd_vm_backup_status(args) -> int:
    from .backups import disks

    found = disks.chains(Path(args.dest))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for chain in found:
        print(f"{chain['chain']}  VM {chain['vm']}  {len(chain['links'])} link(s), {chain['bytes'] / 1024**2:.1f} MiB")
        for link in chain["links"]:
            print(f"    {link['kind']:<11} {Path(link['file']).name}  {link['bytes'] / 1024**2:.1f} MiB")
    if not found:
        print(f"no backup chains in {args.dest}")
    return 0


def cmd_vm_backup_prune(args) -> int:
    from .backups import disks

    gone = disks.prune(Path(args.dest), args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for chain in gone:
        print(f"{verb} chain {chain}")
    print(f"kept the newest {args.keep} chain(s) in {args.dest}; {verb} {len(gone)}")
    return 0


def cmd_vm_backup_scrub(args) -> int:
    from .backups import disks

    had = disks.scrub(_driver(args), args.name)
    print(f"VM '{args.name}': backup bitmap {'removed' if had else 'was not there'}; the next backup is full")
    return 0


def cmd_vm_restore_backup(args) -> int:
    from .backups import disks

    spec = load_config(args.config).vm(args.as_name)
    driver = _driver(args)
    if (driver.vm_dir(spec.name) / "vm.json").exists():
        raise errors.Mismatch(f"VM '{spec.name}' already exists; restore into a new name")
    # Flattened beside the chain, not in the storage: a file there that no ledger row owns is drift.
    disk = disks.restore(Path(args.chain), Path(args.chain).absolute() / f".restore-{spec.name}.qcow2")
    client = _remote()
    if client:  # the daemon records the VM (and its lease) before it boots
        client.vm("create_from_disk", _storage(args), spec=spec.to_dict(), disk=str(disk),
                  lease=os.environ.get("VMFIXTURES_LEASE"))
    else:
        driver.create_from_disk(spec, disk, _owner())
    print(f"VM '{spec.name}' created from the backup chain {args.chain} and running")
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


def _target(args) -> tuple[Backend, str]:
    """A VM name in the storage, or a daemon lease id (its first VM)."""
    client = _remote()
    if client and not (_storage(args) / args.name / "vm.json").exists():
        try:
            vms = client.lease(args.name)["vms"]
        except errors.NotFound:
            vms = None
        if vms:
            return backend_for(Path(vms[0]["storage"]), vms[0]["name"], quiet=args.quiet), vms[0]["name"]
    return _driver(args), args.name


def cmd_ssh(args) -> int:
    driver, name = _target(args)
    m = driver.machine(name)
    known = driver.known_hosts(name)
    argv = ["ssh", "-i", str(m.ssh.key_path), "-p", str(m.ssh_port), "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1", *args.command]
    os.execvp("ssh", argv)


def cmd_portforward(args) -> int:
    """Keep the config's forwards up until Ctrl-C/SIGTERM, restoring any tunnel whose ssh dies."""
    import signal

    import psutil

    from .forwarding import Forwarder

    config = load_config(args.config)
    specs = [f for f in config.forwards if args.vm in (None, f.vm)]
    if not specs:
        raise errors.ConfigError(f"{config.path}: no forwards{f' for VM {args.vm!r}' if args.vm else ''} "
                                 "under 'forwards'")
    driver, client = _driver(args), _remote()

    def record_up(t):
        if client:
            t.ledger_id = client.tunnel_up(driver.storage, t.spec.vm, t.spec.kind, str(t.spec.host),
                                           str(t.spec.guest or "socks5"), t.pid,
                                           psutil.Process(t.pid).create_time(), t.ledger_id)

    def record_down(t):
        if client and t.ledger_id is not None:
            client.tunnel_down(t.ledger_id)

    fwd = Forwarder(driver, specs, say=lambda line: print(line, flush=True), on_up=record_up, on_down=record_down)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: fwd.request_stop())
    fwd.start()
    print(f"forwarding {len(specs)} tunnel(s); Ctrl-C stops them", flush=True)
    given_up = fwd.run()
    pids = fwd.stop()
    print(f"stopped: {len(pids)} ssh process(es) ended, every one gone", flush=True)
    if given_up:
        raise errors.VmfError(f"{given_up} tunnel(s) could not be restored (see the lines above)")
    return 0


def cmd_status(args) -> int:
    from .status import describe, project_status

    rows = project_status(_driver(args), load_config(args.config))
    print(json.dumps(rows, indent=2) if args.json else describe(rows))
    return 0


def cmd_config_example(args) -> int:
    """Write the commented example config, never over an existing file unless --force."""
    from importlib import resources

    target = Path(args.output).absolute()
    text = resources.files("vmfixtures").joinpath("example.yaml").read_text()
    if target.exists() and not args.force:
        print(f"{target} exists; left untouched (--force replaces it)")
        return 0
    if not target.parent.is_dir():
        raise errors.ConfigError(f"{target.parent}: no such folder")
    write_atomically(target, text)
    print(f"wrote the example config to {target}")
    return 0


def cmd_config_check(args) -> int:
    config = load_config(args.config)
    print(f"{config.path}: ok: {len(config.vms)} VM(s), {len(config.mounts)} mount(s), "
          f"{len(config.agents)} agent(s), {len(config.forwards)} forward(s)")
    return 0


def cmd_conformance(args) -> int:
    from . import conformance

    files = args.records or sorted(Path("reports/conformance").glob("*.json"))
    if not files:
        raise errors.ConfigError("no conformance records given and none in reports/conformance/ (run the spec first)")
    records = sorted((conformance.load(Path(f)) for f in files), key=conformance.run_order)
    if args.summary:
        counts = {k: sum(1 for r in records for sc in r["scenarios"] if sc["status"] == k)
                  for k in ("passed", "failed", "skipped")}
        counts["failed"] += sum(1 for r in records for sc in r["scenarios"]
                                if sc["status"] not in ("passed", "failed", "skipped"))
        print(f"spec: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
        return 1 if counts["failed"] else 0
    if args.json:
        print(json.dumps(conformance.as_json(records), indent=2))
    else:
        print(conformance.markdown(records))
    return 0


def cmd_version(args) -> int:
    import shutil
    import subprocess
    from importlib import metadata

    from .backends.qemu import QEMU

    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True) if shutil.which(QEMU) else None
    print(f"vmfixtures {metadata.version('vmfixtures')} (python {sys.version.split()[0]}; "
          f"{qemu.stdout.splitlines()[0] if qemu and qemu.returncode == 0 else 'QEMU not installed'})")
    return 0


def cmd_console(args) -> int:
    driver, name = _target(args)
    driver.spec(name)  # NotFound for an unknown VM
    log = driver.vm_dir(name) / "console.log"
    sys.stdout.write(log.read_text(errors="replace") if log.exists() else "")
    return 0


def cmd_gc(args) -> int:
    client = _remote()
    reclaimed = (client.gc() if client else []) + _driver(args).sweep()
    for line in reclaimed:
        print(f"reclaimed {line}")
    if not reclaimed:
        print("nothing to reclaim")
    return 0


def _mounts_of(args, config, entries):
    from .mounts import Mounts

    driver = _driver(args)
    return [(m, Mounts(driver, m.vm)) for m in entries]


def _mount_entries(args, config):
    if args.all:
        if not config.mounts:
            raise errors.ConfigError(f"{config.path}: no mounts declared under 'mounts'")
        return config.mounts
    if not args.source:
        raise errors.ConfigError("name a mount source or pass --all")
    return [config.mount(args.source)]


def cmd_mount(args) -> int:
    config = load_config(args.config)
    for entry, mounts in _mounts_of(args, config, _mount_entries(args, config)):
        mounts.mount(entry.source, entry.target)
        print(f"mounted {entry.source} at {entry.vm}:{entry.target}")
    return 0


def cmd_umount(args) -> int:
    config = load_config(args.config)
    for entry, mounts in _mounts_of(args, config, _mount_entries(args, config)):
        mounts.umount(entry.target)
        print(f"unmounted {entry.vm}:{entry.target}")
    return 0


def cmd_addmount(args) -> int:
    from .mounts import Mounts
    from .spec import check_config, save_config

    config = load_config(args.config)
    data = dict(config.raw)
    data["mounts"] = list(data.get("mounts") or []) + [{"source": args.source, "target": args.target, "vm": args.vm}]
    # Validate the edit before touching anything: a bad entry changes neither the VM nor the file.
    new = check_config(config, data).mount(args.source)
    mounts = Mounts(_driver(args), new.vm)
    mounts.mount(new.source, new.target)
    try:
        save_config(config, data)
    except BaseException:
        mounts.umount(new.target)  # the file could not be written: undo the mount too
        raise
    print(f"mounted {new.source} at {new.vm}:{new.target} and added it to {config.path}")
    return 0


def cmd_removemount(args) -> int:
    from .mounts import Mounts
    from .spec import save_config

    config = load_config(args.config)
    entry = config.mount(args.source)
    mounts = Mounts(_driver(args), entry.vm)
    if _driver(args).state(entry.vm).value == "running" and mounts.record(entry.target):
        mounts.umount(entry.target)  # fails loudly before the file is touched
    data = dict(config.raw)
    data["mounts"] = [m for m in data.get("mounts") or [] if (config.folder / m["source"]).resolve() != entry.source]
    save_config(config, data)
    print(f"unmounted {entry.vm}:{entry.target} and removed it from {config.path}")
    return 0


def _agent_vm(args, config) -> str:
    if args.vm:
        config.vm(args.vm)
        return args.vm
    if len(config.vms) == 1:
        return next(iter(config.vms))
    raise errors.ConfigError(f"{config.path}: several VMs are declared; say which with --vm")


def cmd_install_agents(args) -> int:
    from . import agents

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
    machine = _driver(args).machine(vm)
    for agent in chosen:
        print(f"installed {agents.install(machine, agent)} in VM '{vm}'")
    return 0


def cmd_run(args) -> int:
    from . import agents
    from .mounts import Mounts

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
    driver = _driver(args)
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


def _print_backup(source, result) -> None:
    if result.snapshot:
        print(f"snapshot {result.snapshot} of {source}")
    else:
        print(f"nothing changed in {source} since {result.previous.name}; no new snapshot")
    for warning in result.warnings:
        print(f"vmfixtures: warning: {warning}", file=sys.stderr)


def cmd_backup_once(args) -> int:
    from .backups.folders import backup_once

    _print_backup(args.source, backup_once(Path(args.source).absolute(), Path(args.dest).absolute()))
    return 0


def _repeat(loops) -> int:
    """Run backup loops until SIGINT or SIGTERM; a backup in progress finishes or is undone."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for loop in loops:
        loop.on_result = lambda r, src=loop.source: _print_backup(src, r)
        loop.run_once()
        loop.start()
    stop.wait()
    for loop in loops:
        loop.stop()
    errors_seen = [e for loop in loops for e in loop.errors]
    for e in errors_seen:
        print(f"vmfixtures: error: {e}", file=sys.stderr)
    print("stopped; no partial snapshot left", file=sys.stderr)
    return 1 if errors_seen else 0


def cmd_backup_repeated(args) -> int:
    from .backups.folders import BackupLoop, _check

    if args.interval <= 0:
        raise errors.ConfigError(f"--interval {args.interval}: must be a positive number of seconds")
    source, dest = Path(args.source).absolute(), Path(args.dest).absolute()
    _check(source, dest)
    return _repeat([BackupLoop(source, dest, args.interval)])


def _mount_loops(config, entries):
    from .agents import backup_dest
    from .backups.folders import BackupLoop, _check

    loops = []
    for m in entries:
        _check(m.source, backup_dest(config, m))  # every mount is checked before any loop starts
        loops.append(BackupLoop(m.source, backup_dest(config, m), m.interval))
    return loops


def cmd_backup_repeated_mount(args) -> int:
    config = load_config(args.config)
    return _repeat(_mount_loops(config, [config.mount(args.source)]))


def cmd_backup_repeated_all(args) -> int:
    config = load_config(args.config)
    if not config.mounts:
        raise errors.ConfigError(f"{config.path}: no mounts declared under 'mounts'")
    return _repeat(_mount_loops(config, config.mounts))


def cmd_backup_clean(args) -> int:
    from .backups.retention import clean

    kept, deleted = clean(Path(args.dest), args.method, args.count, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for snap in deleted:
        print(f"{verb} {snap.name}")
    print(f"kept {len(kept)} snapshot(s) of {args.dest} ({args.method} {args.count}); {verb} {len(deleted)}")
    return 0


def cmd_observe(args) -> int:
    from .observer import Observer, describe

    client = _remote()
    if client:
        report = client.observe(fix=args.fix)
    else:
        ledger_path = paths.daemon_home() / "ledger.sqlite"
        if not ledger_path.exists():
            raise errors.NotFound(f"no daemon ledger at {ledger_path}: nothing to observe")
        from .daemon.ledger import Ledger

        report = Observer(Ledger(ledger_path), paths.daemon_home()).run(fix=args.fix).to_dict()
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 1 if report["findings"] and not args.fix else 0


def cmd_daemon_run(args) -> int:
    from .daemon.server import run_foreground

    return run_foreground(paths.daemon_home(), paths.daemon_socket(), args.idle, args.max_idle, args.reap_interval,
                          args.ready_fd, args.observe_interval)


def cmd_daemon_start(args) -> int:
    client = Client()
    health = client.alive()
    if health:
        print(f"daemon already running (pid {health['pid']}) on {client.socket_path}")
        return 0
    info = start_daemon(client.socket_path, ["--idle", str(args.idle), "--max-idle", str(args.max_idle),
                                             "--reap-interval", str(args.reap_interval),
                                             "--observe-interval", str(args.observe_interval)])
    print(f"daemon started (pid {info['pid']}) on {client.socket_path}; log {paths.daemon_home() / 'daemon.log'}")
    for line in info["reclaimed"]:
        print(f"reclaimed {line}")
    return 0


def cmd_daemon_install(args) -> int:
    from .daemon import systemd

    passed = ["--idle", str(args.idle), "--max-idle", str(args.max_idle),
              "--observe-interval", str(args.observe_interval)]
    files = systemd.install(passed, start=not args.no_start)
    for f in files:
        print(f"wrote {f}")
    print(f"{systemd.UNIT} {'written; not started (--no-start)' if args.no_start else 'enabled and started'}")
    return 0


def cmd_daemon_uninstall(args) -> int:
    from .daemon import systemd

    for f in systemd.uninstall(stop=not args.no_stop):
        print(f"removed {f}")
    print(f"{systemd.UNIT} {'removed' if args.no_stop else 'stopped, disabled and removed'}")
    return 0


def cmd_daemon_stop(args) -> int:
    from .procs import wait_exit

    client = Client()
    health = client.alive()
    if not health:
        print(f"no daemon running on {client.socket_path}")
        return 0
    client.shutdown()
    if not wait_exit(health["pid"], 60.0):
        raise errors.Timeout(f"daemon pid {health['pid']} did not exit within 60s")
    print(f"daemon pid {health['pid']} stopped")
    return 0


def cmd_daemon_status(args) -> int:
    client = Client()
    health = client.alive()
    if not health:
        print(f"no daemon running on {client.socket_path}")
        return 3
    print(json.dumps(health, indent=2) if args.json else
          f"daemon pid {health['pid']} on {health['socket']}: {health['leases']} active lease(s), "
          f"{health['idle']} idle VM(s), up {health['uptime']:.0f}s")
    return 0


def cmd_ls(args) -> int:
    client = Client()
    if not client.alive():
        raise errors.NotFound(f"no vmfixtures daemon on {client.socket_path} (start one with `vmfixtures daemon start`)")
    leases, tunnels = client.leases(), client.tunnels()
    if args.json:
        print(json.dumps({"leases": leases, "vms": client.vms(), "tunnels": tunnels}, indent=2))
        return 0
    for lease in leases:
        print(f"lease {lease['id']}  {lease['scope']:<9} owner pid {lease['owner_pid']}  "
              f"{len(lease['vms'])} VM(s)")
        for vm in lease["vms"]:
            port = f"ssh 127.0.0.1:{vm['ssh_port']}" if vm.get("ssh_port") else ""
            print(f"    {vm['name']:<20} {vm['state']:<8} from {vm['source'] or '?':<7} {port}  {vm['storage']}")
    for t in tunnels:
        print(f"tunnel {t['id']}  {t['kind']:<6} {t['bind']} -> {t['target']}  ssh pid {t['pid']}")
    idle = [v for v in client.vms() if v["ledger_state"] == "pooled"]
    print(f"{len(leases)} lease(s); {len(tunnels)} tunnel(s) up; {len(idle)} idle VM(s) in the warm pool")
    return 0


def cmd_lease_hold(args) -> int:
    """Lease VMs of the config, print where they are, and keep them until interrupted."""
    config = load_config(args.config)
    names = _config_names(args, config)
    client = Client()
    if not client.alive():
        raise errors.NotFound(f"no vmfixtures daemon on {client.socket_path} (start one with `vmfixtures daemon start`)")
    lease = client.open_lease(scope="run", ttl=args.ttl, run_id=f"hold-{os.getpid()}")
    beat = Heartbeat(client, f"hold-{os.getpid()}", args.ttl / 3).start()
    try:
        for name in names:
            client.create(_storage(args), config.vm(name).to_dict(), lease["id"])
        for vm in client.lease(lease["id"])["vms"]:
            print(f"{vm['name']}: ssh 127.0.0.1:{vm['ssh_port']} (lease {lease['id']}, from {vm['source']})", flush=True)
        signal_wait()
    finally:
        beat.stop()
        client.end_lease(lease["id"])
    return 0


def signal_wait() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass


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
    p.add_argument("--backend", help="where new VMs run: qemu (default), libvirt or multipass "
                   "(default: $VMFIXTURES_BACKEND, else the config's defaults.backend); existing VMs "
                   "always use the backend they were created with")
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
    bk = named("backup", "back up a running VM's disk: full the first time, then only the changed blocks",
               cmd_vm_backup)
    bk.add_argument("dest", help="backup folder (chains are grouped by month inside)")
    bk.add_argument("--full", action="store_true", help="start a new chain with a full backup")
    bk.add_argument("--group-by", default="month", choices=["month", "quarter", "half-year", "year"],
                    help="period that groups a chain (default month): a new period starts a full backup")
    bp = vm.add_parser("backup-prune", help="delete all but the newest N backup chains")
    bp.add_argument("dest")
    bp.add_argument("--keep", type=int, required=True)
    bp.add_argument("--dry-run", action="store_true")
    bp.set_defaults(func=cmd_vm_backup_prune)
    named("backup-scrub", "remove the backup bitmap from a running VM (the next backup is full)", cmd_vm_backup_scrub)
    bs = vm.add_parser("backup-status", help="backup chains, links and sizes")
    bs.add_argument("dest")
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=cmd_vm_backup_status)
    rb = vm.add_parser("restore-backup", help="create a new VM from a backup chain and boot it")
    rb.add_argument("chain", help="a chain folder (see backup-status)")
    rb.add_argument("as_name", metavar="NAME", help="the new VM, declared in the config")
    rb.add_argument("-c", "--config", default="vmfixtures.yaml")
    rb.set_defaults(func=cmd_vm_restore_backup)
    ls = vm.add_parser("list", help="VMs in the storage folder and their state")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_vm_list)
    ex = named("exec", "run a command in the guest through the guest agent", cmd_vm_exec)
    ex.add_argument("--timeout", type=float, default=60.0)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")

    s = sub.add_parser("ssh", help="open an SSH session (or run a command) in a running VM")
    s.add_argument("name", help="VM name, or a daemon lease id")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_ssh)
    pf = sub.add_parser("portforward", help="keep the config's SSH tunnels (local, remote, socks5) up until Ctrl-C",
                        description="Start one ssh per forward in the config's 'forwards' list, wait until each "
                                    "really listens, restore any that dies, and stop them all on Ctrl-C/SIGTERM. "
                                    "Host ends bind to 127.0.0.1 unless the config names another address.")
    pf.add_argument("--vm", help="only the forwards of this VM")
    pf.add_argument("-c", "--config", default="vmfixtures.yaml")
    pf.set_defaults(func=cmd_portforward)
    stp = sub.add_parser("status", help="VMs of the config: state, resources, mounts, last backups, running agents")
    stp.add_argument("-c", "--config", default="vmfixtures.yaml")
    stp.add_argument("--json", action="store_true")
    stp.set_defaults(func=cmd_status)
    sh = sub.add_parser("shell", help="an interactive shell in a running VM (commands from stdin when it is no terminal)")
    sh.add_argument("name", help="VM name, or a daemon lease id")
    sh.set_defaults(func=cmd_ssh, command=[])
    cf = sub.add_parser("config", help="write the example config, or check a config").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    ce = cf.add_parser("example", help="write a commented example config (an existing file is left untouched)")
    ce.add_argument("-o", "--output", default="vmfixtures.yaml", help="where (default: ./vmfixtures.yaml)")
    ce.add_argument("--force", action="store_true", help="replace an existing file (atomically)")
    ce.set_defaults(func=cmd_config_example)
    cc = cf.add_parser("check", help="validate a config: one error naming file, line and field, or ok")
    cc.add_argument("-c", "--config", default="vmfixtures.yaml")
    cc.set_defaults(func=cmd_config_check)
    sub.add_parser("version", help="the installed vmfixtures, Python and QEMU versions").set_defaults(func=cmd_version)
    cf = sub.add_parser("conformance", help="capability x backend table from spec runs' records "
                        "(reports/conformance/*.json, written by every behave run)")
    cf.add_argument("records", nargs="*", type=Path, help="conformance records (default: reports/conformance/*.json)")
    cf.add_argument("--json", action="store_true", help="machine-readable, with each failure")
    cf.add_argument("--summary", action="store_true", help="one line: N passed, N failed, N skipped (exit 1 on a failure)")
    cf.set_defaults(func=cmd_conformance)
    c = sub.add_parser("console", help="print a VM's serial console log")
    c.add_argument("name", help="VM name, or a daemon lease id")
    c.set_defaults(func=cmd_console)
    g = sub.add_parser("gc", help="destroy VMs whose owning test run died; kill orphan QEMU processes of ours")
    g.set_defaults(func=cmd_gc)
    for verb, func, helptext in (("mount", cmd_mount, "mount a host folder of the config into its VM"),
                                 ("umount", cmd_umount, "unmount a folder of the config from its VM")):
        mp = sub.add_parser(verb, help=helptext)
        mp.add_argument("source", nargs="?", help="the mount's source, as written in the config")
        mp.add_argument("--all", action="store_true", help="every mount of the config")
        mp.add_argument("-c", "--config", default="vmfixtures.yaml")
        mp.set_defaults(func=func)
    am = sub.add_parser("addmount", help="add a mount to the config and mount it at once")
    am.add_argument("source", help="host folder (relative paths resolve against the config's folder)")
    am.add_argument("target", help="absolute guest path")
    am.add_argument("--vm", required=True, help="the VM to mount it in")
    am.add_argument("-c", "--config", default="vmfixtures.yaml")
    am.set_defaults(func=cmd_addmount)
    rm = sub.add_parser("removemount", help="unmount, then remove the mount from the config")
    rm.add_argument("source")
    rm.add_argument("-c", "--config", default="vmfixtures.yaml")
    rm.set_defaults(func=cmd_removemount)

    ia = sub.add_parser("install-agents", help="install agents of the config into a VM from host artifacts")
    ia.add_argument("name", nargs="?", help="agent name")
    ia.add_argument("--all-agents", action="store_true", help="every agent of the config")
    ia.add_argument("--vm", help="the VM (default: the config's only VM)")
    ia.add_argument("-c", "--config", default="vmfixtures.yaml")
    ia.set_defaults(func=cmd_install_agents)
    ra = sub.add_parser("run", help="run an agent in its VM, working in a mounted project folder")
    ra.add_argument("agent")
    ra.add_argument("--vm", help="the VM (default: the VM of the mount)")
    ra.add_argument("--mount", help="the mount's source (default: the first mount of the VM)")
    ra.add_argument("--disable-backups", action="store_true",
                    help="no snapshots of the folder before, during and after the run")
    ra.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    ra.add_argument("-c", "--config", default="vmfixtures.yaml")
    ra.add_argument("args", nargs="*", help="arguments passed to the agent (after --)")
    ra.set_defaults(func=cmd_run)

    bo = sub.add_parser("backup-once", help="snapshot a folder (rsync --link-dest; none if nothing changed)")
    bo.add_argument("source")
    bo.add_argument("dest")
    bo.set_defaults(func=cmd_backup_once)
    br = sub.add_parser("backup-repeated", help="snapshot a folder every --interval seconds until Ctrl-C/SIGTERM")
    br.add_argument("source")
    br.add_argument("dest")
    br.add_argument("--interval", type=float, default=60.0, help="seconds between snapshots (default 60)")
    br.set_defaults(func=cmd_backup_repeated)
    bm = sub.add_parser("backup-repeated-mount", help="repeated backups of one mount, with its config settings")
    bm.add_argument("source", help="the mount's source, as written in the config")
    bm.add_argument("-c", "--config", default="vmfixtures.yaml")
    bm.set_defaults(func=cmd_backup_repeated_mount)
    ba = sub.add_parser("backup-repeated-all", help="repeated backups of every mount of the config")
    ba.add_argument("-c", "--config", default="vmfixtures.yaml")
    ba.set_defaults(func=cmd_backup_repeated_all)
    bc = sub.add_parser("backup-clean", help="retention: keep the newest N (tail) or N spaced by age (thin)")
    bc.add_argument("dest")
    bc.add_argument("method", choices=["tail", "thin"])
    bc.add_argument("count", type=int)
    bc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    bc.set_defaults(func=cmd_backup_clean)

    ob = sub.add_parser("observe", help="compare the daemon's ledger with reality (exit 1 on drift)")
    ob.add_argument("--json", action="store_true")
    ob.add_argument("--fix", action="store_true", help="repair what is safe: reap orphans, mark state")
    ob.set_defaults(func=cmd_observe)

    dm = sub.add_parser("daemon", help="the fixture daemon: leases, warm pool, reaping").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    for verb, func, helptext in (("run", cmd_daemon_run, "run in the foreground"),
                                 ("start", cmd_daemon_start, "start in the background and wait until it listens")):
        d = dm.add_parser(verb, help=helptext)
        d.add_argument("--idle", type=int, default=1, help="idle restored VMs kept per spec (default 1)")
        d.add_argument("--max-idle", type=int, default=2, help="idle VMs in all (default 2, sized for 2 cores)")
        d.add_argument("--reap-interval", type=float, default=1.0, help="seconds between reaper passes")
        d.add_argument("--observe-interval", type=float, default=5.0,
                       help="seconds between observer passes (0: off; default 5)")
        if verb == "run":
            d.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
        d.set_defaults(func=func)
    dm.add_parser("stop", help="drain the idle pool and stop").set_defaults(func=cmd_daemon_stop)
    di = dm.add_parser("install", help="run the daemon as a systemd service (system unit as root, else user unit)")
    di.add_argument("--idle", type=int, default=1)
    di.add_argument("--max-idle", type=int, default=2)
    di.add_argument("--observe-interval", type=float, default=5.0)
    di.add_argument("--no-start", action="store_true", help="write the unit and its env file only")
    di.set_defaults(func=cmd_daemon_install)
    du = dm.add_parser("uninstall", help="stop and disable the systemd service, remove its files")
    du.add_argument("--no-stop", action="store_true", help="remove the files only (systemd not asked)")
    du.set_defaults(func=cmd_daemon_uninstall)
    st = dm.add_parser("status", help="is a daemon running, and what it holds")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_daemon_status)
    lsp = sub.add_parser("ls", help="the daemon's leases and VMs")
    lsp.add_argument("--json", action="store_true")
    lsp.set_defaults(func=cmd_ls)
    le = sub.add_parser("lease", help="hold leased VMs").add_subparsers(dest="action", required=True, metavar="ACTION")
    h = le.add_parser("hold", help="lease VMs of the config and keep them until Ctrl-C (or the TTL lapses)")
    h.add_argument("name", nargs="?")
    h.add_argument("--all", action="store_true")
    h.add_argument("-c", "--config", default="vmfixtures.yaml")
    h.add_argument("--ttl", type=float, default=30.0, help="seconds the daemon waits for a heartbeat (default 30)")
    h.set_defaults(func=cmd_lease_hold)

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
