"""Evidence for a failed scenario: what the operator ran, what the daemon logged, what the observer saw."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from ..sut.base import Outcome


class OperatorLog:
    """A product adapter that remembers every ``Outcome`` it returns: the operator's commands
    and their output, for the report of a failed scenario. Everything else passes through."""

    def __init__(self, product):
        object.__setattr__(self, "_product", product)
        object.__setattr__(self, "outcomes", [])

    def __getattr__(self, name):
        value = getattr(self._product, name)
        if name.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def recorded(*args, **kwargs):
            result = value(*args, **kwargs)
            if isinstance(result, Outcome):
                self.outcomes.append(result)
            return result
        return recorded

    def __setattr__(self, name, value):
        setattr(self._product, name, value)

    def transcript(self) -> str:
        """Each command with its exit code and output, in the order the scenario ran them."""
        parts = []
        for o in self.outcomes:
            verdict = o.status + (f" ({o.refusal})" if o.refusal else "")
            parts.append(f"$ {' '.join(map(str, o.argv)) or o.action}\n-> {verdict}, exit {o.exit_code}"
                         + (f"\n--- stdout\n{o.stdout.rstrip()[-20000:]}" if o.stdout.strip() else "")
                         + (f"\n--- stderr\n{o.stderr.rstrip()[-20000:]}" if o.stderr.strip() else ""))
        return "\n\n".join(parts)


def log_lines_between(log: Path, since: float, until: float) -> list[str]:
    """Lines of a ``logging`` file (``%(asctime)s`` first) stamped in [since, until]; continuation
    lines (tracebacks) go with the line before them."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return []
    keep, inside = [], False
    for line in text.splitlines():
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            if inside:
                keep.append(line)
            continue
        inside = since - 1 <= stamp <= until + 1
        if inside:
            keep.append(line)
    return keep


def observer_passes(reports: list[dict], since: float, until: float) -> str:
    """The observer's passes that ran within [since, until], as indented JSON."""
    passes = [r for r in reports if since <= r["started_at"] and r["started_at"] + r["seconds"] <= until]
    return json.dumps(passes, indent=1)
