"""The living specification: every capability with its scenarios, how each fared in the latest
runs (per backend and product), and the seed rule each scenario implements.

Seed rules are tags: ``@seed.<doc>.<section>``, where ``<doc>`` is the seed's number (the
test plan ``shared/seeds/<doc>_*.txt``) and ``<section>`` the seed's own numbering where it
numbers its sections (``@seed.001.3.1.2``: plan 001, section 3.1, item 2) or a short name of
the heading or test it lists (``@seed.000.p0-mounts``). A feature's tag holds for all its
scenarios.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from behave.parser import parse_file

from .. import conformance
from ..errors import ConfigError

# The five test plans the specification grew from (shared/seeds/), and the sections tags name.
SEEDS = {
    "000": ("agsekit (Multipass): missing integration tests", {
        "p0-lifecycle": "P0 VM lifecycle", "p0-mounts": "P0 mounts", "p0-backups": "P0 backups",
        "p0-agents": "P0 agent flow", "p0-connectivity": "P0 connectivity (ssh, shell, portforward, status)",
        "p1-systemd": "P1 systemd mode", "p1-forwarding": "P1 proxychains and forwarding",
        "p2-config": "P2 config UX", "p2-maintenance": "P2 maintenance commands"}),
    "001": ("VMAN (QEMU VM manager with an observer): integration test plan", {
        "1.1": "shared test infrastructure", "2.2": "test storage management",
        "3.1": "VM lifecycle", "3.1.1": "create and start a VM", "3.1.2": "stop a running VM",
        "3.1.3": "restart a VM", "3.1.4": "delete a VM", "3.1.5": "VM error handling",
        "3.2": "disk operations", "3.3": "observer coherence", "3.3.1": "detect a VM state mismatch",
        "3.3.2": "detect an orphan QEMU process", "3.3.3": "detect a missing disk file",
        "3.3.4": "detect an orphan disk file", "3.3.5": "observer periodic checks",
        "3.5.2": "multiple VMs concurrently", "3.5.3": "error recovery", "6.3": "test isolation"}),
    "002": ("libvirt agent sandbox: integration test set-up and status", {
        "create-vm-from-template": "create a VM from a template", "vm-start-stop-lifecycle": "VM start/stop lifecycle",
        "vm-snapshot-restore": "VM snapshot and restore"}),
    "003": ("VMSnap (virtnbdbackup): integration test plan", {
        "1": "basic backup operations", "2": "incremental backups", "3": "backup rotation and grouping",
        "4": "scrubbing", "5": "status and information commands", "6": "error scenarios"}),
    "004": ("PyInfra OrbStack connector: end-to-end tests", {
        "1": "VM lifecycle", "2": "connector command execution", "3": "file operations",
        "4": "VM operations with parameters", "5": "VM lifecycle operations", "8": "error handling",
        "9": "network functionality"}),
}
SEED_PREFIX = "seed."
TAG = re.compile(r"seed\.(?P<doc>\d{3})(\.(?P<section>[a-z0-9][a-z0-9.-]*))?")


def seed_rule(tag: str) -> str:
    """``seed.001.3.1.2`` -> ``001 §3.1.2 stop a running VM``, ``seed.000.p0-mounts`` -> ``000 P0 mounts``; ConfigError for a tag naming no known seed section."""
    m = TAG.fullmatch(tag)
    if not m or m["doc"] not in SEEDS:
        raise ConfigError(f"@{tag}: not a seed rule (expected @seed.<doc>.<section>, doc one of {', '.join(SEEDS)})")
    title, sections = SEEDS[m["doc"]]
    if m["section"] is None:
        return f"{m['doc']} {title}"
    if m["section"] not in sections:
        raise ConfigError(f"@{tag}: seed {m['doc']} has no section {m['section']!r} "
                          f"(known: {', '.join(sections)})")
    numbered = all(part.isdigit() for part in m["section"].split("."))
    return f"{m['doc']} " + (f"§{m['section']} " if numbered else "") + sections[m["section"]]


def seed_tags(tags) -> list[str]:
    return [t for t in tags if t.startswith(SEED_PREFIX)]


def _status(cell: list[dict]) -> str:
    if not cell:
        return "not run"
    failed = [s for s in cell if s["status"] not in ("passed", "skipped")]
    if failed:
        return "**failed**" if len(cell) == 1 else f"**failed {len(failed)} of {len(cell)}**"
    if all(s["status"] == "passed" for s in cell):
        return "passed"
    if all(s["status"] == "skipped" for s in cell):
        return "skipped"
    return f"passed {sum(s['status'] == 'passed' for s in cell)} of {len(cell)}"


def load_records(files: list[Path] | None) -> list[tuple[dict, float]]:
    paths = files if files else sorted(Path("reports/conformance").glob("*.json"))
    records = [(conformance.load(Path(p)), Path(p).stat().st_mtime) for p in paths]
    return sorted(records, key=lambda r: conformance.run_order(r[0]))


def markdown(features_dir: Path, records: list[tuple[dict, float]]) -> str:
    files = sorted(Path(features_dir).glob("*.feature"))
    if not files:
        raise ConfigError(f"{features_dir}: no feature files")
    runs = list(dict.fromkeys(r["run"] for r, _ in records))
    outcomes: dict[tuple[str, str, str], list[dict]] = {}
    for record, _ in records:
        for s in record["scenarios"]:
            outcomes.setdefault((record["run"], s["feature"], s["name"]), []).append(s)
    reasons: dict[str, int] = {}
    seeds: dict[str, list[str]] = {}

    out = ["# Living specification", "",
           "Generated by `vmfixtures docs` from `features/*.feature` and the latest conformance records "
           "(`reports/conformance/`); regenerate it after a run. Each capability lists its scenarios, "
           "how each fared in each run (backend, or product-backend) and the seed rule it implements "
           "(the test plans in `shared/seeds/`, by `@seed.*` tag).", ""]
    if records:
        out.append("Runs: " + "; ".join(
            f"`{r['run']}` ({r.get('backend', '?')}, {r.get('product', 'vmfixtures')} "
            f"{r.get('product.version', '')}".rstrip() + f", {time.strftime('%Y-%m-%d %H:%M', time.localtime(m))})"
            for r, m in records) + ".")
    else:
        out.append("No conformance records yet: every status below reads \"not run\".")
    out.append("")
    parsed = []
    for path in files:
        try:
            feature = parse_file(str(path))
        except Exception as exc:  # behave's parser raises its own ParserError
            raise ConfigError(f"{path}: {exc}") from None
        if feature is not None:
            parsed.append((path, feature))
    out += ["| Capability | Feature | Priority | Scenarios |", "| --- | --- | --- | --- |"]
    for path, feature in parsed:
        cap = conformance.capability(feature.tags) or "other"
        prio = ", ".join(t for t in feature.tags if t in ("p0", "p1", "p2"))
        anchor = re.sub(r"[^a-z0-9 -]", "", feature.name.lower()).replace(" ", "-")
        out.append(f"| {cap} | [{feature.name}](#{anchor}) | {prio} | {len(_scenarios(feature))} |")
    out.append("")
    for path, feature in parsed:
        cap = conformance.capability(feature.tags) or "other"
        out += [f"## {feature.name}", "",
                f"`@{cap}` · {', '.join('@' + t for t in feature.tags if t != cap)} · `{path.as_posix()}`", ""]
        out += [line.strip() for line in feature.description] + [""]
        out += ["| Scenario | " + " | ".join(runs) + " | Seed rule |",
                "| --- | " + " | ".join("---" for _ in runs) + " | --- |"]
        for name, tags, generated in _scenarios(feature):
            rules = []
            for tag in seed_tags(list(feature.tags) + [t for t in tags if t not in feature.tags]):
                rule = seed_rule(tag)
                rules.append(rule)
                seeds.setdefault(rule, []).append(f"{feature.name}: {name}")
            cells = []
            for run in runs:
                found = [s for g in generated for s in outcomes.get((run, feature.name, g), [])]
                text = _status(found)
                if text == "skipped":
                    why = "; ".join(sorted({s.get("reason") or "not selected" for s in found}))
                    text = f"skipped [{reasons.setdefault(why, len(reasons) + 1)}]"
                cells.append(text)
            out.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + f" | {'; '.join(rules) or '(own rule)'} |")
        out.append("")
    if reasons:
        out += ["## Why scenarios were skipped", ""]
        out += [f"[{n}] {why}  " for why, n in reasons.items()] + [""]
    out += ["## Seed rules and the scenarios that implement them", ""]
    for doc, (title, _) in SEEDS.items():
        rules = sorted((r for r in seeds if r.startswith(doc + " ")), key=_section_order)
        out.append(f"- **{doc}** {title}: " + ("" if rules else "no scenario yet"))
        for rule in rules:
            out.append(f"  - {rule.removeprefix(doc + ' ')}: {len(seeds[rule])} scenario(s)")
    return "\n".join(out).rstrip() + "\n"


def _section_order(rule: str):
    section = rule.split(" ")[1]
    return [(0, int(p)) if p.isdigit() else (1, p) for p in section.removeprefix("§").split(".")]


def _scenarios(feature) -> list[tuple[str, list[str], list[str]]]:
    """(name, tags, names of the scenarios it runs as: an outline runs as one per example row)."""
    found = []
    for s in list(feature.scenarios) + [s for rule in getattr(feature, "rules", []) for s in rule.scenarios]:
        generated = [g.name for g in s.scenarios] if type(s).__name__ == "ScenarioOutline" else [s.name]
        found.append((s.name, list(s.tags), generated))
    return found


def write(features_dir: Path, record_files: list[Path] | None, out: Path) -> Path:
    """Write the living specification to ``out`` (Markdown)."""
    text = markdown(features_dir, load_records(record_files))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
