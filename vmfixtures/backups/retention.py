"""Which snapshots to keep: ``tail N`` and ``thin N``.

Both work on complete snapshots only (``-partial`` folders are never
considered, let alone deleted) and never delete the newest snapshot.

tail N
    Keep the newest N.

thin N (logarithmic spacing)
    1. Keep the newest ``P = min(N, 3)`` snapshots unconditionally: the
       last few states are the ones most often restored.
    2. Among the older snapshots, keep ``K = N - P`` whose ages (time before
       the newest snapshot) are closest, on a logarithmic scale, to ``K``
       targets spaced evenly in ``log(age)`` between the youngest and the
       oldest of them. Target ``k`` (k = 0..K-1) is
       ``exp(log a_min + k (log a_max - log a_min) / (K - 1))``, the single
       target for K = 1 being the oldest age. Targets are served oldest
       first; each takes the closest snapshot not yet taken (ties go to the
       older one).

    So the spacing between kept snapshots grows with age, the oldest snapshot
    survives whenever K > 0, and exactly N remain when there were more.
    The choice depends only on the timestamps, so it is deterministic, and
    thinning an already-thinned set (N or fewer) deletes nothing.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime
from pathlib import Path

from ..errors import ConfigError
from .folders import snapshots

PROTECTED = 3


def _time(snapshot: Path) -> datetime:
    return datetime.strptime(snapshot.name, "%Y%m%dT%H%M%S.%f")


def keep_tail(times: list[float], n: int) -> set[int]:
    """Indexes (into ``times``, oldest first) of the newest ``n``."""
    return set(range(max(0, len(times) - n), len(times)))


def keep_thin(times: list[float], n: int) -> set[int]:
    """Indexes (into ``times``, sorted oldest first) kept by logarithmic thinning to ``n``."""
    m = len(times)
    if m <= n:
        return set(range(m))
    protected = min(n, PROTECTED)
    keep = set(range(m - protected, m))
    k = n - protected
    if k == 0:
        return keep
    newest = times[-1]
    candidates = list(range(m - protected))  # older ones, oldest first
    log_age = {i: math.log1p(max(0.0, newest - times[i])) for i in candidates}
    lo, hi = min(log_age.values()), max(log_age.values())
    targets = [hi] if k == 1 else [hi - j * (hi - lo) / (k - 1) for j in range(k)]  # oldest target first
    free = set(candidates)
    for target in targets:
        best = min(free, key=lambda i: (abs(log_age[i] - target), i))  # ties: the older (smaller index)
        free.discard(best)
        keep.add(best)
    return keep


def plan(dest: Path, method: str, n: int) -> tuple[list[Path], list[Path]]:
    """(kept, deleted) snapshots of ``dest`` under ``method`` ('tail' or 'thin')."""
    if method not in ("tail", "thin"):
        raise ConfigError(f"retention method {method!r}: use 'tail' or 'thin'")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"retention count {n!r}: keep at least 1 snapshot")
    snaps = snapshots(dest)
    times = [_time(s).timestamp() for s in snaps]
    kept_idx = (keep_tail if method == "tail" else keep_thin)(times, n)
    return [s for i, s in enumerate(snaps) if i in kept_idx], [s for i, s in enumerate(snaps) if i not in kept_idx]


def clean(dest: Path, method: str, n: int, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Apply ``plan``: delete what it does not keep (unless ``dry_run``)."""
    if not Path(dest).is_dir():
        raise ConfigError(f"backup folder {dest} does not exist")
    kept, deleted = plan(Path(dest), method, n)
    if not dry_run:
        for snap in deleted:
            shutil.rmtree(snap)
    return kept, deleted
