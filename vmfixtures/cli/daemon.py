"""`vmfixtures daemon`, `ls`, `lease`, `observe`, `gc`: the fixture daemon and what it holds."""

from __future__ import annotations

import argparse
import json
import os

from .. import errors, paths
from ..client import Client, Heartbeat, start_daemon
from ..spec import load_config
from .common import (add_config, add_json, backend_name, daemon_client, named_vms, signal_wait, storage_dir,
                     vm_backend)


def cmd_observe(args) -> int:
    from ..observer import Observer, describe

    client = daemon_client()
    if client:
        report = client.observe(fix=args.fix)
    else:
        ledger_path = paths.daemon_home() / "ledger.sqlite"
        if not ledger_path.exists():
            raise errors.NotFound(f"no daemon ledger at {ledger_path}: nothing to observe")
        from ..daemon.ledger import Ledger

        report = Observer(Ledger(ledger_path), paths.daemon_home()).run(fix=args.fix).to_dict()
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 1 if report["findings"] and not args.fix else 0


def cmd_daemon_run(args) -> int:
    from ..daemon.server import run_foreground

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
    from ..daemon import systemd

    passed = ["--idle", str(args.idle), "--max-idle", str(args.max_idle),
              "--observe-interval", str(args.observe_interval)]
    files = systemd.install(passed, start=not args.no_start)
    for f in files:
        print(f"wrote {f}")
    print(f"{systemd.UNIT} {'written; not started (--no-start)' if args.no_start else 'enabled and started'}")
    return 0


def cmd_daemon_uninstall(args) -> int:
    from ..daemon import systemd

    for f in systemd.uninstall(stop=not args.no_stop):
        print(f"removed {f}")
    print(f"{systemd.UNIT} {'removed' if args.no_stop else 'stopped, disabled and removed'}")
    return 0


def cmd_daemon_stop(args) -> int:
    client = Client()
    pid, gone = client.stop(60.0)
    if pid is None:
        print(f"no daemon running on {client.socket_path}")
        return 0
    if not gone:
        raise errors.Timeout(f"daemon pid {pid} did not exit within 60s")
    print(f"daemon pid {pid} stopped")
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
    names = named_vms(args, config)
    client = Client()
    if not client.alive():
        raise errors.NotFound(f"no vmfixtures daemon on {client.socket_path} (start one with `vmfixtures daemon start`)")
    lease = client.open_lease(scope="run", ttl=args.ttl, run_id=f"hold-{os.getpid()}")
    beat = Heartbeat(client, f"hold-{os.getpid()}", args.ttl / 3).start()
    try:
        for name in names:
            client.create(storage_dir(args), config.vm(name).to_dict(), lease["id"], backend_name(args))
        for vm in client.lease(lease["id"])["vms"]:
            print(f"{vm['name']}: ssh 127.0.0.1:{vm['ssh_port']} (lease {lease['id']}, from {vm['source']})", flush=True)
        signal_wait()
    finally:
        beat.stop()
        client.end_lease(lease["id"])
    return 0


def cmd_gc(args) -> int:
    client = daemon_client()
    reclaimed = (client.gc() if client else []) + vm_backend(args).sweep()
    for line in reclaimed:
        print(f"reclaimed {line}")
    if not reclaimed:
        print("nothing to reclaim")
    return 0


def register(sub) -> None:
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
    add_json(st)
    st.set_defaults(func=cmd_daemon_status)
    lsp = sub.add_parser("ls", help="the daemon's leases and VMs")
    add_json(lsp)
    lsp.set_defaults(func=cmd_ls)
    le = sub.add_parser("lease", help="hold leased VMs").add_subparsers(dest="action", required=True, metavar="ACTION")
    h = le.add_parser("hold", help="lease VMs of the config and keep them until Ctrl-C (or the TTL lapses)")
    h.add_argument("name", nargs="?")
    h.add_argument("--all", action="store_true")
    add_config(h)
    h.add_argument("--ttl", type=float, default=30.0, help="seconds the daemon waits for a heartbeat (default 30)")
    h.set_defaults(func=cmd_lease_hold)
    ob = sub.add_parser("observe", help="compare the daemon's ledger with reality (exit 1 on drift)")
    add_json(ob)
    ob.add_argument("--fix", action="store_true", help="repair what is safe: reap orphans, mark state")
    ob.set_defaults(func=cmd_observe)
    g = sub.add_parser("gc", help="destroy VMs whose owning test run died; kill orphan QEMU processes of ours")
    g.set_defaults(func=cmd_gc)
