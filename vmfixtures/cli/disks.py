"""`vmfixtures disk`: data disks created in the storage, attached to VMs while they run."""

from __future__ import annotations

import argparse
import json
import os

from ..disks import Disks
from ..sizes import format_size
from .common import add_json, daemon_client, storage_dir

HELP = """Data disks are qcow2 files kept in the storage folder (<storage>/.disks/NAME.qcow2).
Attaching one to a running VM hot-plugs it (a new virtio disk appears in the guest,
the VM keeps running); attaching to a stopped VM records it and the VM boots with it.
A VM keeps its disks across stop and start; destroying a VM detaches its disks, it
never deletes them. An attached disk cannot be removed or attached to another VM.
With a fixture daemon running, the daemon does the work and keeps a ledger row per
disk; disks created under a daemon lease ($VMFIXTURES_LEASE) go when the lease ends."""


def _run(args, action: str, **fields):
    """The daemon's answer when one runs, else the library's (same shapes)."""
    client = daemon_client()
    if client:
        return client.disk(action, storage_dir(args), **fields)
    disks = Disks(storage_dir(args), quiet=args.quiet)
    if action == "create":
        return disks.create(fields["name"], fields["size"]).to_dict()
    if action == "attach":
        disk, how = disks.attach(fields["name"], fields["vm"])
        return {"name": fields["name"], "vm": fields["vm"], "how": how, "slot": disk.slot}
    if action == "detach":
        vm, hot = disks.detach(fields["name"])
        return {"name": fields["name"], "vm": vm, "hot": hot}
    if action == "remove":
        return {"name": fields["name"], "file": str(disks.remove(fields["name"]))}
    return [d.to_dict() for d in disks.list()]


def cmd_disk_create(args) -> int:
    fields = {"name": args.name, "size": args.size}
    if daemon_client() and os.environ.get("VMFIXTURES_LEASE"):
        fields["lease"] = os.environ["VMFIXTURES_LEASE"]
    r = _run(args, "create", **fields)
    print(f"disk '{r['name']}' created ({format_size(r['size'])}, {r['file']})")
    return 0


def cmd_disk_attach(args) -> int:
    r = _run(args, "attach", name=args.name, vm=args.vm)
    if r["how"] == "already":
        print(f"disk '{r['name']}' is already attached to VM '{r['vm']}'; nothing to do")
    elif r["how"] == "hot":
        print(f"disk '{r['name']}' attached to VM '{r['vm']}' (hot-plugged, PCI slot {r['slot']:#x})")
    else:
        print(f"disk '{r['name']}' attached to VM '{r['vm']}' (stopped: it boots with the disk)")
    return 0


def cmd_disk_detach(args) -> int:
    r = _run(args, "detach", name=args.name)
    if r["vm"] is None:
        print(f"disk '{r['name']}' is not attached; nothing to do")
    else:
        how = "hot-unplugged" if r["hot"] else "stopped: it boots without the disk"
        print(f"disk '{r['name']}' detached from VM '{r['vm']}' ({how})")
    return 0


def cmd_disk_rm(args) -> int:
    r = _run(args, "remove", name=args.name)
    print(f"disk '{r['name']}' removed ({r['file']})")
    return 0


def cmd_disk_ls(args) -> int:
    rows = _run(args, "list")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        where = f"attached to {r['attached_to']}" if r["attached_to"] else "detached"
        print(f"{r['name']:<20} {format_size(r['size']):>6}  {where:<30} {r['file']}")
    if not rows:
        print(f"no disks in {storage_dir(args)}")
    return 0


def register(sub) -> None:
    disk = sub.add_parser("disk", help="data disks: create, attach to a running VM, detach, remove, list",
                          description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = disk.add_subparsers(dest="action", required=True, metavar="ACTION")
    cr = actions.add_parser("create", help="create an empty qcow2 data disk in the storage")
    cr.add_argument("name", help="disk name (lowercase letters, digits and '-')")
    cr.add_argument("--size", required=True, help="virtual size, e.g. 512M or 10G (space is allocated as written)")
    cr.set_defaults(func=cmd_disk_create)
    at = actions.add_parser("attach", help="attach a disk to a VM: hot-plugged when it runs, at its next boot "
                                           "otherwise")
    at.add_argument("name", help="disk name")
    at.add_argument("--vm", required=True, help="the VM to attach it to")
    at.set_defaults(func=cmd_disk_attach)
    de = actions.add_parser("detach", help="detach a disk from its VM (hot-unplugged when the VM runs; the guest "
                                           "must let go of it)")
    de.add_argument("name", help="disk name")
    de.set_defaults(func=cmd_disk_detach)
    rm = actions.add_parser("rm", help="delete a detached disk and its file (an attached one is refused)")
    rm.add_argument("name", help="disk name")
    rm.set_defaults(func=cmd_disk_rm)
    ls = actions.add_parser("ls", help="the storage's disks: size, file, the VM each is attached to")
    add_json(ls)
    ls.set_defaults(func=cmd_disk_ls)

