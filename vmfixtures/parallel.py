"""The specification in parallel: one behave process per feature, several at once, one fixture daemon.

A scenario spends most of its time waiting on guests (under TCG as much as under KVM), so features run
side by side even on two cores: two workers took 131 s and 96 s for features that take 129 s and 88 s
alone. Each feature is one behave run of its own (its own run folder, leases and cleanup); the longest
features start first (by the last run's times, else by their number of scenarios).

Scenarios that change what every run shares (the daemon killed and started again, the observer's
fixes) are tagged ``@exclusive``: they wait until no other scenario runs, and none starts until they
are done (``ScenarioLock``, a fair readers-writer lock on two flock files).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import ConfigError
from .files import write_atomically

EXCLUSIVE_TAG = "exclusive"
LOCK_ENV = "VMFIXTURES_SPEC_LOCK"  # the lock folder of a parallel run, for environment.py
PART_ENV = "VMFIXTURES_SPEC_PART"  # which part of a parallel run a behave process is (names its records)
# The spec's daemon observes every 2 s instead of 5 s: observer scenarios wait for its next pass.
SPEC_DAEMON_ARGS = ["--observe-interval", "2"]
SCENARIO_GUESS_S = 4.0  # a feature never timed: this much per scenario, for the order only
SUMMARY = re.compile(r"^(\d+) scenarios? passed, (\d+) failed,(?: (\d+) error,)? (\d+) skipped", re.M)


def run_lock() -> ScenarioLock | None:
    """The scenario lock of the parallel run this behave process is part of, or None outside one."""
    folder = os.environ.get(LOCK_ENV)
    return ScenarioLock(Path(folder)) if folder else None


def between_scenarios():
    """In a parallel run, a block that must not overlap an exclusive scenario (a run's start-up, which
    connects to the daemon such a scenario may have killed for a moment); elsewhere, nothing."""
    lock = run_lock()
    return lock.shared() if lock else nullcontext()


class ScenarioLock:
    """Scenarios of parallel behave runs share it; an exclusive one holds it alone.

    Fair: a waiting exclusive scenario holds the turnstile, so no new shared holder gets past it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._held = None

    def _open(self, name: str) -> int:
        return os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self, exclusive: bool) -> None:
        turnstile, lock = self._open("turnstile"), self._open("scenarios")
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(lock)
            raise
        finally:
            os.close(turnstile)  # closing it releases it
        self._held = lock

    @contextmanager
    def shared(self):
        """Held for the block, beside other scenarios but never during an exclusive one."""
        self.acquire(exclusive=False)
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None


@dataclass
class Feature:
    """One feature file of the run, with what it is expected to take."""

    path: Path
    scenarios: int
    estimate: float = 0.0
    seconds: float = 0.0
    exit_code: int | None = None
    counts: dict = field(default_factory=dict)
    output: Path | None = None

    @property
    def slug(self) -> str:
        return self.path.stem


def select(paths_: list[Path], tags: list[str]) -> list[Feature]:
    """The feature files under ``paths_`` with at least one scenario the tag expression selects."""
    from behave.parser import ParserError, parse_file
    from behave.tag_expression import make_tag_expression

    files = []
    for p in paths_:
        if p.is_dir():
            files += sorted(p.rglob("*.feature"))
        elif p.suffix == ".feature" and p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p}: not a feature file or a folder of them")
    try:
        expression = make_tag_expression(tags)
    except Exception as exc:  # the tag parser's own error types differ by protocol
        raise ConfigError(f"--tags {' '.join(tags)}: {exc}") from None
    features = []
    for f in files:
        try:
            parsed = parse_file(str(f))
        except ParserError as exc:
            raise ConfigError(f"{f}: {exc}") from None
        n = sum(1 for s in parsed.walk_scenarios() if s.should_run_with_tags(expression)) if parsed else 0
        if n:
            features.append(Feature(f, n))
    return features


class Timings:
    """Each feature's last wall time per backend and tag selection, to start the longest first."""

    def __init__(self, path: Path | None = None):
        self.path = path or paths.state_dir() / "spec-timings.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def key(feature: Feature, selection: str) -> str:
        return f"{selection}|{feature.path.resolve()}"

    def order(self, features: list[Feature], selection: str) -> list[Feature]:
        for f in features:
            f.estimate = self.data.get(self.key(f, selection), f.scenarios * SCENARIO_GUESS_S)
        return sorted(features, key=lambda f: -f.estimate)

    def save(self, features: list[Feature], selection: str) -> None:
        for f in features:
            if f.exit_code == 0:  # a failed or interrupted run's time says little about the next one
                self.data[self.key(f, selection)] = round(f.seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def counts(output: str) -> dict:
    """Scenario counts from behave's summary at the end of its output."""
    m = SUMMARY.search(output)
    if not m:
        return {}
    return {"passed": int(m[1]), "failed": int(m[2]), "error": int(m[3] or 0), "skipped": int(m[4])}


class Runner:
    """Runs features as behave processes, ``workers`` at a time, and reports each as it ends."""

    def __init__(self, features: list[Feature], workers: int, behave_args: list[str], verbose: bool = False,
                 say=None):
        self.features, self.workers, self.behave_args, self.verbose = features, workers, behave_args, verbose
        self.say = say or (lambda m: print(f"[spec] {m}", file=sys.stderr, flush=True))
        self.running: dict[subprocess.Popen, tuple[Feature, float]] = {}
        self.stopping = False

    def _start(self, feature: Feature, lock: Path, out: Path) -> None:
        feature.output = out / f"{feature.slug}.log"
        env = {**os.environ, LOCK_ENV: str(lock), PART_ENV: feature.slug, "VMFIXTURES_KEEP_DAEMON": "1"}
        args = [a.replace("{feature}", feature.slug) for a in self.behave_args]
        with open(feature.output, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "behave", *args, str(feature.path)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.running[proc] = (feature, time.monotonic())

    def _finish(self, proc: subprocess.Popen, code: int) -> None:
        feature, started = self.running.pop(proc)
        feature.seconds, feature.exit_code = time.monotonic() - started, code
        text = feature.output.read_text(errors="replace")
        feature.counts = counts(text)
        c = feature.counts
        outcome = (f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped" if c
                   else "no summary from behave")
        done = sum(1 for f in self.features if f.exit_code is not None)
        self.say(f"{done}/{len(self.features)} {feature.path} {'ok' if code == 0 else f'FAILED (exit {code})'}: "
                 f"{outcome} in {feature.seconds:.1f} s")
        if code != 0 or self.verbose:
            print(f"----- {feature.path} (behave exit {code}) -----\n{text.rstrip()}\n-----", flush=True)

    def stop(self, signum=None, frame=None) -> None:
        """Interrupted: no new feature starts; each running behave cleans up on SIGTERM."""
        self.stopping = True
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        pending = list(self.features)
        with tempfile.TemporaryDirectory(prefix="vmfx-spec-") as tmp:
            lock, out = Path(tmp) / "lock", Path(tmp) / "out"
            lock.mkdir()
            out.mkdir()
            last_news = time.monotonic()
            while pending or self.running:
                while pending and len(self.running) < self.workers and not self.stopping:
                    self._start(pending.pop(0), lock, out)
                for proc in list(self.running):
                    code = proc.poll()
                    if code is not None:
                        self._finish(proc, code)
                if self.stopping:
                    pending.clear()
                if time.monotonic() - last_news >= 30 and self.running:
                    names = ", ".join(f.slug for f, _ in self.running.values())
                    self.say(f"running: {names}; {len(pending)} feature(s) waiting")
                    last_news = time.monotonic()
                time.sleep(0.1)
        codes = [f.exit_code for f in self.features if f.exit_code is not None]
        odd = [c for c in codes if c not in (0, 1)]
        if self.stopping:
            return 130
        return odd[0] if odd else (1 if 1 in codes else 0)
