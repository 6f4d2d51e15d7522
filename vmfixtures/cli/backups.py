"""`vmfixtures backup-*`: snapshots of host folders and their retention."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import errors
from ..spec import load_config
from .common import add_config


def _print_backup(source, result) -> None:
    if result.snapshot:
        print(f"snapshot {result.snapshot} of {source}")
    else:
        print(f"nothing changed in {source} since {result.previous.name}; no new snapshot")
    for warning in result.warnings:
        print(f"vmfixtures: warning: {warning}", file=sys.stderr)


def cmd_backup_once(args) -> int:
    from ..backups.folders import backup_once

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
    from ..backups.folders import BackupLoop, _check

    if args.interval <= 0:
        raise errors.ConfigError(f"--interval {args.interval}: must be a positive number of seconds")
    source, dest = Path(args.source).absolute(), Path(args.dest).absolute()
    _check(source, dest)
    return _repeat([BackupLoop(source, dest, args.interval)])


def _mount_loops(config, entries):
    from ..agents import backup_dest
    from ..backups.folders import BackupLoop, _check

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
    from ..backups.retention import clean

    kept, deleted = clean(Path(args.dest), args.method, args.count, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for snap in deleted:
        print(f"{verb} {snap.name}")
    print(f"kept {len(kept)} snapshot(s) of {args.dest} ({args.method} {args.count}); {verb} {len(deleted)}")
    return 0


def register(sub) -> None:
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
    add_config(bm)
    bm.set_defaults(func=cmd_backup_repeated_mount)
    ba = sub.add_parser("backup-repeated-all", help="repeated backups of every mount of the config")
    add_config(ba)
    ba.set_defaults(func=cmd_backup_repeated_all)
    bc = sub.add_parser("backup-clean", help="retention: keep the newest N (tail) or N spaced by age (thin)")
    bc.add_argument("dest")
    bc.add_argument("method", choices=["tail", "thin"])
    bc.add_argument("count", type=int)
    bc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    bc.set_defaults(func=cmd_backup_clean)
