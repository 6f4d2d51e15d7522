"""Conformance: what each run of the specification found, per capability and backend (or product).

A spec run records every scenario it considered (``environment.py`` writes
``reports/conformance/<backend>[-<product>].json``): its feature, its
capability tag, its outcome and, for a skip, the reason the probe gave.
``table`` folds several such files into capability x run cells: "passed",
"failed 1 of 7", "skipped: <reason>".
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

# The tags that say what a scenario is about, not how important it is or what it needs.
NON_CAPABILITY = ("p0", "p1", "p2", "reference", "wip")


@dataclass
class Cell:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def text(self) -> str:
        total = self.passed + self.failed + self.skipped
        if self.failed:
            return f"failed {self.failed} of {total}"
        if self.passed and self.skipped:
            return f"passed {self.passed}, skipped {self.skipped}"
        if self.passed:
            return f"passed {self.passed}"
        reason = "; ".join(sorted(set(self.reasons))) or "no reason given"
        return f"skipped: {reason}"


def capability(feature_tags: list[str]) -> str | None:
    """The feature's capability: its first tag that is not a priority, @reference or @requires/@fixture/@seed."""
    for tag in feature_tags:
        if tag not in NON_CAPABILITY and not tag.startswith(("requires.", "fixture.", "observer.", "seed.")):
            return tag
    return None


def run_order(record: dict) -> tuple:
    """Our own product first, then by backend (qemu, libvirt, multipass), then by name."""
    backends = ("qemu", "libvirt", "multipass")
    backend = record.get("backend", "")
    return (record.get("product", "vmfixtures") != "vmfixtures",
            backends.index(backend) if backend in backends else len(backends), record["run"])


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such conformance record (run the spec first)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a conformance record: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list) or "run" not in data:
        raise ConfigError(f"{path}: not a conformance record (expected 'run' and 'scenarios')")
    return data


def table(records: list[dict]) -> tuple[list[str], dict[str, dict[str, Cell]]]:
    """(run names, capability -> run -> cell)."""
    runs = list(dict.fromkeys(r["run"] for r in records))  # a run may come in several records (P0, then P1)
    cells: dict[str, dict[str, Cell]] = defaultdict(lambda: defaultdict(Cell))
    for record in records:
        for s in record["scenarios"]:
            cell = cells[capability(s["feature_tags"]) or "other"][record["run"]]
            if s["status"] == "passed":
                cell.passed += 1
            elif s["status"] == "skipped":
                cell.skipped += 1
                cell.reasons.append(s.get("reason") or "not selected")
            else:
                cell.failed += 1
                cell.failures.append(f"{s['feature']}: {s['name']}: {s.get('error') or s['status']}")
    return runs, cells


def markdown(records: list[dict]) -> str:
    """The table, skip reasons numbered below it so that the cells stay short."""
    runs, cells = table(records)
    reasons: dict[str, int] = {}

    def cell(c: Cell | None) -> str:
        if c is None:
            return "not run"
        text = c.text()
        if text.startswith("skipped: "):
            number = reasons.setdefault(text.removeprefix("skipped: "), len(reasons) + 1)
            return f"skipped [{number}]"
        return text

    lines = ["| Capability | " + " | ".join(runs) + " |", "| --- | " + " | ".join("---" for _ in runs) + " |"]
    for cap in sorted(cells):
        lines.append(f"| {cap} | " + " | ".join(cell(cells[cap].get(r)) for r in runs) + " |")
    if reasons:
        lines.append("")
        lines += [f"[{n}] {reason}" + ("  " if n < len(reasons) else "") for reason, n in reasons.items()]
    return "\n".join(lines)


def as_json(records: list[dict]) -> dict:
    runs, cells = table(records)
    return {"runs": runs, "capabilities": {
        cap: {r: {"outcome": c.text(), "passed": c.passed, "failed": c.failed, "skipped": c.skipped,
                  "failures": c.failures} for r, c in by_run.items()} for cap, by_run in sorted(cells.items())}}


class Recorder:
    """Collects scenario outcomes during a behave run (used by environment.py)."""

    def __init__(self, run: str, meta: dict | None = None):
        self.run = run
        self.meta = meta or {}
        self.scenarios: list[dict] = []

    def add(self, scenario, error: str | None = None) -> None:
        status = scenario.status.name if hasattr(scenario.status, "name") else str(scenario.status)
        self.scenarios.append({
            "feature": scenario.feature.name, "file": str(scenario.feature.filename),
            "feature_tags": list(scenario.feature.tags), "name": scenario.name,
            "tags": list(scenario.effective_tags), "status": "failed" if error and status == "passed" else status,
            "reason": getattr(scenario, "skip_reason", None) or None, "error": error})

    def write(self, folder: Path, part: str | None = None) -> Path:
        """One record per run; a run split into parts (`vmfixtures spec`) writes one per part."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"{self.run}.{part}.json" if part else f"{self.run}.json")
        path.write_text(json.dumps({"run": self.run, **self.meta, "scenarios": self.scenarios}, indent=1) + "\n")
        return path
