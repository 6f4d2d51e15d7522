"""`vmfixtures mount`, `umount`, `addmount`, `removemount`: host folders in VMs."""

from __future__ import annotations

from .. import errors
from ..spec import load_config
from .common import add_config, vm_backend


def _mounts_of(args, config, entries):
    from ..mounts import Mounts

    driver = vm_backend(args)
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
    from ..mounts import Mounts
    from ..spec import check_config, save_config

    config = load_config(args.config)
    data = dict(config.raw)
    data["mounts"] = list(data.get("mounts") or []) + [{"source": args.source, "target": args.target, "vm": args.vm}]
    # Validate the edit before touching anything: a bad entry changes neither the VM nor the file.
    new = check_config(config, data).mount(args.source)
    mounts = Mounts(vm_backend(args), new.vm)
    mounts.mount(new.source, new.target)
    try:
        save_config(config, data)
    except BaseException:
        mounts.umount(new.target)  # the file could not be written: undo the mount too
        raise
    print(f"mounted {new.source} at {new.vm}:{new.target} and added it to {config.path}")
    return 0


def cmd_removemount(args) -> int:
    from ..mounts import Mounts
    from ..spec import save_config

    config = load_config(args.config)
    entry = config.mount(args.source)
    mounts = Mounts(vm_backend(args), entry.vm)
    if vm_backend(args).state(entry.vm).value == "running" and mounts.record(entry.target):
        mounts.umount(entry.target)  # fails loudly before the file is touched
    data = dict(config.raw)
    data["mounts"] = [m for m in data.get("mounts") or [] if (config.folder / m["source"]).resolve() != entry.source]
    save_config(config, data)
    print(f"unmounted {entry.vm}:{entry.target} and removed it from {config.path}")
    return 0


def register(sub) -> None:
    for verb, func, helptext in (("mount", cmd_mount, "mount a host folder of the config into its VM"),
                                 ("umount", cmd_umount, "unmount a folder of the config from its VM")):
        mp = sub.add_parser(verb, help=helptext)
        mp.add_argument("source", nargs="?", help="the mount's source, as written in the config")
        mp.add_argument("--all", action="store_true", help="every mount of the config")
        add_config(mp)
        mp.set_defaults(func=func)
    am = sub.add_parser("addmount", help="add a mount to the config and mount it at once")
    am.add_argument("source", help="host folder (relative paths resolve against the config's folder)")
    am.add_argument("target", help="absolute guest path")
    am.add_argument("--vm", required=True, help="the VM to mount it in")
    add_config(am)
    am.set_defaults(func=cmd_addmount)
    rm = sub.add_parser("removemount", help="unmount, then remove the mount from the config")
    rm.add_argument("source")
    add_config(rm)
    rm.set_defaults(func=cmd_removemount)
