"""`vmfixtures status`, `config`, `version`, `conformance`, `accel`: the project and this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import errors
from ..files import write_atomically
from ..spec import load_config
from .common import add_config, add_json, vm_backend


def cmd_status(args) -> int:
    from ..status import describe, project_status

    rows = project_status(vm_backend(args), load_config(args.config))
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
    from .. import conformance

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

    from ..backends.qemu import QEMU

    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True) if shutil.which(QEMU) else None
    print(f"vmfixtures {metadata.version('vmfixtures')} (python {sys.version.split()[0]}; "
          f"{qemu.stdout.splitlines()[0] if qemu and qemu.returncode == 0 else 'QEMU not installed'})")
    return 0


def cmd_accel(args) -> int:
    a = vm_backend(args).accel(refresh=args.refresh)
    print(f"{a.name}: {a.reason} (probe boot {a.probe_seconds:.1f}s)")
    return 0


def register(sub) -> None:
    stp = sub.add_parser("status", help="VMs of the config: state, resources, mounts, last backups, running agents")
    add_config(stp)
    add_json(stp)
    stp.set_defaults(func=cmd_status)
    cf = sub.add_parser("config", help="write the example config, or check a config").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    ce = cf.add_parser("example", help="write a commented example config (an existing file is left untouched)")
    ce.add_argument("-o", "--output", default="vmfixtures.yaml", help="where (default: ./vmfixtures.yaml)")
    ce.add_argument("--force", action="store_true", help="replace an existing file (atomically)")
    ce.set_defaults(func=cmd_config_example)
    cc = cf.add_parser("check", help="validate a config: one error naming file, line and field, or ok")
    add_config(cc)
    cc.set_defaults(func=cmd_config_check)
    sub.add_parser("version", help="the installed vmfixtures, Python and QEMU versions").set_defaults(func=cmd_version)
    cr = sub.add_parser("conformance", help="capability x backend table from spec runs' records "
                        "(reports/conformance/*.json, written by every behave run)")
    cr.add_argument("records", nargs="*", type=Path, help="conformance records (default: reports/conformance/*.json)")
    cr.add_argument("--json", action="store_true", help="machine-readable, with each failure")
    cr.add_argument("--summary", action="store_true", help="one line: N passed, N failed, N skipped (exit 1 on a failure)")
    cr.set_defaults(func=cmd_conformance)
    a = sub.add_parser("accel", help="show the accelerator in use (KVM probe with a deadline, else TCG)")
    a.add_argument("--refresh", action="store_true", help="probe again instead of using the cached result")
    a.set_defaults(func=cmd_accel)
