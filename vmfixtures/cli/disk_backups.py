"""`vmfixtures vm backup*` and `restore-backup`: incremental backups of a VM's disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import errors
from ..spec import load_config
from .common import (
    add_config,
    add_json,
    daemon_client,
    owner_pid,
    storage_dir,
    vm_backend,
)


def cmd_vm_backup(args) -> int:
    from ..backends import backend_for
    from ..backups import disks

    dest = Path(args.dest).absolute()
    names = [args.name]
    if disks.is_pattern(args.name):  # every running VM of the storage whose name matches
        driver = vm_backend(args)
        names = disks.running_matches(lambda n: backend_for(driver.storage, n), driver.names(), args.name)
    for name in names:
        link = disks.backup(vm_backend(args, name), name, dest, full=args.full, group_by=args.group_by)
        print(f"{link['kind']} backup of VM '{name}': {link['file']} ({link['bytes'] / 1024**2:.1f} MiB, "
              f"checkpoint {link['checkpoint']})")
    return 0


def _driver_for(args):
    """Opens the backend of a VM of the storage, None when it has no record there."""
    from ..backends import backend_for, recorded_backend

    storage = storage_dir(args)
    return lambda vm: backend_for(storage, vm, quiet=True) if recorded_backend(storage / vm) else None


def cmd_vm_backup_status(args) -> int:
    from ..backups import disks

    found = disks.status(Path(args.dest), _driver_for(args))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for vm, info in found["vms"].items():
        print(f"VM {vm} ({info['state']}): {info['chains']} chain(s); next backup {info['next']}")
        print(f"  checkpoints: {', '.join(info['checkpoints']) or 'none'}")
        for chain in (c for c in found["chains"] if c["vm"] == vm):
            print(f"  {chain['chain']}  {len(chain['links'])} link(s), {chain['bytes'] / 1024**2:.1f} MiB")
            for link in chain["links"]:
                print(f"    {link['kind']:<11} {Path(link['file']).name}  {link['bytes'] / 1024**2:.1f} MiB  "
                      f"checkpoint {link.get('checkpoint', '-')}")
    if not found["chains"]:
        print(f"no backup chains in {args.dest}")
    return 0


def cmd_vm_backup_prune(args) -> int:
    from ..backups import disks

    gone = disks.prune(Path(args.dest), args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for chain in gone:
        print(f"{verb} chain {chain}")
    print(f"kept the newest {args.keep} chain(s) in {args.dest}; {verb} {len(gone)}")
    return 0


def cmd_vm_backup_scrub(args) -> int:
    from ..backups import disks

    gone = disks.scrub(vm_backend(args), args.name, args.checkpoint)
    for cp in gone:
        print(f"VM '{args.name}': deleted checkpoint {cp}")
    if not gone:
        print(f"VM '{args.name}': no backup checkpoints; nothing to do")
    return 0


def cmd_vm_restore_backup(args) -> int:
    from ..backups import disks

    spec = load_config(args.config).vm(args.as_name)
    driver = vm_backend(args)
    if (driver.vm_dir(spec.name) / "vm.json").exists():
        raise errors.Mismatch(f"VM '{spec.name}' already exists; restore into a new name")
    # Flattened beside the chain, not in the storage: a file there that no ledger row owns is drift.
    disk = disks.restore(Path(args.chain), Path(args.chain).absolute() / f".restore-{spec.name}.qcow2")
    client = daemon_client()
    if client:  # the daemon records the VM (and its lease) before it boots
        client.vm("create_from_disk", storage_dir(args), spec=spec.to_dict(), disk=str(disk),
                  lease=os.environ.get("VMFIXTURES_LEASE"))
    else:
        driver.create_from_disk(spec, disk, owner_pid())
    print(f"VM '{spec.name}' created from the backup chain {args.chain} and running")
    return 0


def register(vm, named) -> None:
    """Adds the disk-backup commands to the `vm` group (see vms.register)."""
    bk = named("backup", "back up a running VM's disk (NAME may be a pattern such as 'web*': every running VM "
               "matching it): full the first time, then only the changed blocks",
               cmd_vm_backup)
    bk.add_argument("dest", help="backup folder (DEST/<vm>/<period>: chains grouped by month unless --group-by)")
    bk.add_argument("--full", action="store_true", help="start a new chain with a full backup")
    bk.add_argument("--group-by", default="month", choices=["month", "quarter", "half-year", "year"],
                    help="period that groups a chain (default month): a new period starts a full backup")
    bp = vm.add_parser("backup-prune", help="delete all but the newest N backup chains")
    bp.add_argument("dest")
    bp.add_argument("--keep", type=int, required=True)
    bp.add_argument("--dry-run", action="store_true")
    bp.set_defaults(func=cmd_vm_backup_prune)
    sc = named("backup-scrub", "delete a running VM's backup checkpoints, or the one named (a chain whose last "
               "checkpoint is gone ends: the next backup is full)", cmd_vm_backup_scrub)
    sc.add_argument("--checkpoint", help="delete only this checkpoint (see backup-status), keep the others")
    bs = vm.add_parser("backup-status", help="backup chains, links and sizes; each VM's state and checkpoints")
    bs.add_argument("dest")
    add_json(bs)
    bs.set_defaults(func=cmd_vm_backup_status)
    rb = vm.add_parser("restore-backup", help="create a new VM from a backup chain and boot it")
    rb.add_argument("chain", help="a chain folder (see backup-status)")
    rb.add_argument("as_name", metavar="NAME", help="the new VM, declared in the config")
    add_config(rb)
    rb.set_defaults(func=cmd_vm_restore_backup)
