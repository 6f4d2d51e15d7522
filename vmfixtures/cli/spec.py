"""`vmfixtures spec`: the specification with several behave workers sharing one fixture daemon."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from .. import errors

PROGRESS = "vmfixtures.report.progress:Progress"
DEFAULT_WORKERS = 4  # measured on 2 cores under TCG: scenarios mostly wait on guests (bench/p0.py)


def worker_args(tags: list[str], define: list[str], passthrough: list[str]) -> list[str]:
    """Each behave run's arguments: the selection, the settings, what followed ``--``, and our progress
    formatter unless a formatter was given there (a failed feature's output then says which step
    failed, and why)."""
    args = [f"--tags={t}" for t in tags] + [f"-D{d}" for d in define] + passthrough
    if not any(a in ("-f", "--format") or a.startswith(("-f", "--format=")) for a in passthrough):
        args += ["-f", PROGRESS]
    return args


def cmd_spec(args) -> int:
    from .. import parallel
    from ..client import ensure_daemon

    if args.workers < 1:
        raise errors.ConfigError(f"--workers: {args.workers} must be at least 1")
    bad = [d for d in args.define if "=" not in d]
    if bad:
        raise errors.ConfigError(f"-D {bad[0]}: expected KEY=VALUE")
    features = parallel.select(args.paths or [Path("features")], args.tags)
    if not features:
        raise errors.ConfigError(f"no scenario in {' '.join(map(str, args.paths or ['features']))} matches "
                                 f"--tags {' '.join(args.tags) or '(none)'}")
    selection = " ".join(sorted(args.define) + args.tags)
    timings = parallel.Timings()
    features = timings.order(features, selection)
    workers = min(args.workers, len(features))
    behave_args = worker_args(args.tags, args.define, args.passthrough)
    backend = dict(d.split("=", 1) for d in args.define).get("backend")
    if backend:  # as each run's before_all does, for the daemon started here too
        os.environ["VMFIXTURES_BACKEND"] = backend
    started = None
    if os.environ.get("VMFIXTURES_DAEMON") != "off":
        client, started = ensure_daemon(extra_args=parallel.SPEC_DAEMON_ARGS)
        if started:
            print(f"[spec] started the fixture daemon (pid {started['pid']}) on {client.socket_path}", flush=True)
    scenarios = sum(f.scenarios for f in features)
    print(f"[spec] {scenarios} scenarios in {len(features)} features on {workers} workers; the longest start "
          f"first; a failed feature's output is printed in full", flush=True)
    runner = parallel.Runner(features, workers, behave_args, verbose=args.verbose)
    previous = {s: signal.signal(s, runner.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        code = runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started and os.environ.get("VMFIXTURES_KEEP_DAEMON") != "1":
            pid, gone = client.stop(60.0)  # started here, stopped here; its templates stay for the next run
            if not gone:
                print(f"[spec] the fixture daemon (pid {pid}) did not stop within 60 s", flush=True)
    wall = time.monotonic() - t0
    timings.save(features, selection)
    total = {k: sum(f.counts.get(k, 0) for f in features) for k in ("passed", "failed", "error", "skipped")}
    busy = sum(f.seconds for f in features)
    failed = [str(f.path) for f in features if f.exit_code not in (0, None)]
    print(f"[spec] {total['passed']} scenarios passed, {total['failed'] + total['error']} failed, "
          f"{total['skipped']} skipped in {wall:.1f} s on {workers} workers ({busy:.1f} s of behave runs); "
          + (f"{len(failed)} feature(s) failed: {', '.join(failed)}; " if failed else "") + f"exit {code}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "wall_seconds": round(wall, 1), "workers": workers, "exit_code": code, "totals": total,
            "features": [{"path": str(f.path), "scenarios": f.scenarios, "seconds": round(f.seconds, 1),
                          "exit_code": f.exit_code, "counts": f.counts} for f in features]}, indent=1) + "\n")
    return code


def register(sub) -> None:
    p = sub.add_parser(
        "spec", help="run the specification with several behave workers sharing one fixture daemon",
        usage="vmfixtures spec [-h] [--tags EXPR] [-D KEY=VALUE] [--workers N] [-v] [--json FILE] [PATH ...] "
              "[-- BEHAVE_ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the feature files as separate behave runs, WORKERS at a time, the longest first "
                    "(by the last run's times), all using one fixture daemon (started here if none runs, and "
                    "stopped at the end). Scenarios tagged @exclusive run alone. Each feature's result is one "
                    "line as it ends; a failed feature's whole output follows it. Exit 0 when every feature "
                    "passed, 1 when one failed, or the code of a run that could not start (2: bad arguments).",
        epilog="BEHAVE_ARGS after -- go to every behave run as they are (formatters, --junit-directory, ...);\n"
               f"without a -f there, each run prints {PROGRESS}: dots, then each failed scenario's step and error.\n"
               "example: vmfixtures spec --tags=@p0\n"
               "         vmfixtures spec -D backend=libvirt --tags=@p0 -- --junit-directory reports/junit-libvirt\n"
               "In arguments after --, {feature} becomes each feature's name (for example -o out/{feature}.json).")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="feature files or folders of them (default: features)")
    p.add_argument("--tags", action="append", default=[], metavar="EXPR",
                   help="behave's tag expression; repeat to require several (and)")
    p.add_argument("-D", dest="define", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for the spec (backend, product, agsekit), given to every worker")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                   help=f"behave runs at once (default: {DEFAULT_WORKERS})")
    p.add_argument("-v", "--verbose", action="store_true", help="print every feature's output, not only a failed one's")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write each feature's outcome and time to FILE")
    p.set_defaults(func=cmd_spec)
