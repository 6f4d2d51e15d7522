#!/usr/bin/env python3
"""The P0 (``vmfixtures spec --tags=@p0``) wall time with its phases, on the default qemu backend with the daemon.

The spec runs as ``./bootstrap spec`` runs it: features side by side (``--workers``, default the
runner's), one behave run per feature, one fixture daemon. ``--workers 1`` runs them one at a time.

Phases, each from an independent record:
- image check and daemon start: timed here, before the runner starts (its behave runs use that daemon);
- per feature: the wall time of its behave run (the runner's --json); per scenario: wall time from a
  timeline formatter (a timestamp when each scenario starts, hooks included), time in steps from
  behave's JSON formatter;
- waiting for VMs: the daemon's log lines ``vm ... from SOURCE in S`` written during the run
  (pool hand-off, restore, template boot), summed per source.

A run without the daemon (VMFIXTURES_DAEMON=off) takes far too long to repeat as a baseline,
so the targets of issue 15 and the figures measured before it are printed next to the
measured ones instead.

    python bench/p0.py [--tags @p0] [--workers N] [-- extra behave arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from behave.formatter.base import Formatter  # noqa: E402

from bench.boot import pct  # noqa: E402

TARGET_P0_S = 120.0
BEFORE_P0_S = "240-305 s"  # issue 15, measured 2026-11-22
TARGET_POOLED_MS = 10.0
VM_LINE = re.compile(r"^(\S+ \S+) INFO vm (\S+): from (\w+) in ([0-9.]+)s")


class Timeline(Formatter):
    """One JSON line per feature and scenario start, and one at the end (behave ``-f bench.p0:Timeline``)."""

    name = "timeline"
    description = "timestamps of feature and scenario starts (bench/p0.py)"

    def __init__(self, stream_opener, config):
        super().__init__(stream_opener, config)
        self.stream = self.open()

    def _mark(self, kind: str, name: str = "", where: str = "") -> None:
        self.stream.write(json.dumps({"t": time.time(), "kind": kind, "name": name, "where": where}) + "\n")
        self.stream.flush()

    def feature(self, feature):
        self._mark("feature", feature.name, str(feature.location))

    def scenario(self, scenario):
        self._mark("scenario", scenario.name, str(scenario.location))

    def eof(self):
        self._mark("eof")

    def close(self):
        self._mark("close")
        self.close_stream()


def spans(marks: list[dict]) -> tuple[list[tuple[dict, float]], list[tuple[dict, float]]]:
    """(feature, wall seconds) and (scenario, wall seconds): a feature lasts until the next feature or the
    run's end, a scenario until the next mark (scenario, feature or a feature's end)."""
    features, scenarios = [], []
    for i, m in enumerate(marks):
        if m["kind"] == "feature":
            end = next((n["t"] for n in marks[i + 1:] if n["kind"] in ("feature", "close")), marks[-1]["t"])
            features.append((m, end - m["t"]))
        elif m["kind"] == "scenario":
            end = marks[i + 1]["t"] if i + 1 < len(marks) else m["t"]
            scenarios.append((m, end - m["t"]))
    return features, scenarios


def step_seconds(report: list[dict]) -> dict[str, float]:
    """Seconds spent in steps per scenario location (behave's JSON: features -> elements -> steps)."""
    got = {}
    for feature in report:
        for el in feature.get("elements", []):
            got[el.get("location", "")] = sum((s.get("result") or {}).get("duration", 0.0) for s in el.get("steps", []))
    return got


def vm_waits(log: Path, offset: int) -> list[tuple[str, str, float]]:
    """(VM, source, seconds) of every VM the daemon placed after ``offset`` in its log."""
    if not log.is_file():
        return []
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [(m.group(2), m.group(3), float(m.group(4))) for m in map(VM_LINE.match, text.splitlines()) if m]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", default="@p0", help="behave tag expression (default @p0)")
    ap.add_argument("--workers", type=int, help="behave runs at once (default: the runner's default)")
    ap.add_argument("behave_args", nargs="*", help="more behave arguments (after --)")
    args = ap.parse_args()
    if os.environ.get("VMFIXTURES_DAEMON", "").lower() in ("off", "0", "no"):
        raise SystemExit("bench/p0.py measures the P0 with the fixture daemon; unset VMFIXTURES_DAEMON")
    os.environ.pop("VMFIXTURES_BACKEND", None)  # the default backend

    from vmfixtures import parallel, paths
    from vmfixtures.backends.qemu import QemuBackend
    from vmfixtures.client import ensure_daemon

    log = paths.daemon_home() / "daemon.log"
    offset = log.stat().st_size if log.is_file() else 0
    t0 = time.perf_counter()
    QemuBackend(quiet=True).image()  # built here if missing (a phase of its own)
    t_image = time.perf_counter() - t0
    client, started = ensure_daemon(extra_args=parallel.SPEC_DAEMON_ARGS)
    t_daemon = time.perf_counter() - t0 - t_image
    out = Path(tempfile.mkdtemp(prefix="vmfx-p0-"))
    cmd = [str(ROOT / ".venv/bin/vmfixtures"), "spec", f"--tags={args.tags}", "--json", str(out / "spec.json"),
           *(["--workers", str(args.workers)] if args.workers else []), "--", "--no-capture",
           "-f", "json", "-o", str(out / "{feature}.json"), "-f", "bench.p0:Timeline",
           "-o", str(out / "{feature}.timeline.jsonl"), "-f", "progress", *args.behave_args]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    try:
        t1, wall1 = time.perf_counter(), time.time()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        t_behave = time.perf_counter() - t1
    finally:
        if started:  # leave the machine as it was: a daemon this bench started is stopped again
            client.stop(60)
    wall = t_image + t_daemon + t_behave

    run = json.loads((out / "spec.json").read_text())
    report, scenarios, firsts = [], [], []
    for f in run["features"]:
        slug = Path(f["path"]).stem
        if (out / f"{slug}.json").is_file():
            report += json.loads((out / f"{slug}.json").read_text() or "[]")
        timeline = out / f"{slug}.timeline.jsonl"
        if timeline.is_file():
            marks = [json.loads(line) for line in timeline.read_text().splitlines() if line.strip()]
            scenarios += spans(marks)[1]
            firsts += [m["t"] for m in marks[:1]]
    in_steps = step_seconds(report)
    statuses = [el.get("status") for f in report for el in f.get("elements", []) if el.get("type") == "scenario"]
    waits = vm_waits(log, offset)

    print(f"\nP0 ({args.tags}), qemu backend, fixture daemon {'started by this bench' if started else 'already running'}:")
    print(f"  {'image check':<46} {t_image:7.1f} s")
    print(f"  {'daemon start' if started else 'daemon check (running)':<46} {t_daemon:7.1f} s")
    first = min(firsts) if firsts else None
    print(f"  {'runner and behave start-up until a first feature':<46} {(first - wall1) if first else 0:7.1f} s")
    busy = sum(f["seconds"] for f in run["features"])
    print(f"  per feature (its behave run, start-up and hooks included), {run['workers']} at a time:")
    for f in sorted(run["features"], key=lambda x: -x["seconds"]):
        print(f"    {f['seconds']:7.1f} s  {f['path']}")
    print(f"  behave runs {busy:.1f} s in all, in {t_behave:.1f} s of wall time ({busy / t_behave:.2f} at a time)")
    steps_total = sum(in_steps.values())
    print("  slowest 10 scenarios (wall / in steps):")
    for m, s in sorted(scenarios, key=lambda x: -x[1])[:10]:
        print(f"    {s:7.1f} s / {in_steps.get(m['where'], 0.0):6.1f} s  {m['name']}  ({m['where']})")
    by_source: dict[str, list[float]] = {}
    for _, source, secs in waits:
        by_source.setdefault(source, []).append(secs)
    vm_total = sum(secs for _, _, secs in waits)
    print(f"  time in steps {steps_total:.1f} s; outside steps (hooks, leases, teardown, start-up) "
          f"{busy - steps_total:.1f} s (summed over the behave runs)")
    print(f"  waiting for VMs (daemon's log, {len(waits)} VMs placed): {vm_total:.1f} s")
    for source, secs in sorted(by_source.items()):
        print(f"    from {source:<9} n={len(secs):<3} total {sum(secs):6.1f} s   p50 {pct(secs, 50) * 1000:8.1f} ms")
    print(f"  scenarios: {len(statuses)} ({', '.join(f'{statuses.count(s)} {s}' for s in sorted(set(statuses)))})"
          f"; runner exit code {rc}")
    print(f"  whole P0 wall time {wall:.1f} s (runner {t_behave:.1f} s); before issue 15: {BEFORE_P0_S}")
    pooled = by_source.get("pool", [])
    ok = wall <= TARGET_P0_S
    print(f"targets (issue 15): P0 <= {TARGET_P0_S:.0f}s {'MET' if ok else 'MISSED'} ({wall:.0f}s); "
          + (f"pooled lease p50 <= {TARGET_POOLED_MS:.0f}ms {'MET' if pct(pooled, 50) * 1000 <= TARGET_POOLED_MS else 'MISSED'} "
             f"({pct(pooled, 50) * 1000:.1f}ms, daemon side)" if pooled else "no pooled lease in this run"))
    print(f"files: {out} (spec.json, and per feature its behave JSON and timeline)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
