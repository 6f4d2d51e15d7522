"""Retention properties (hypothesis), and real folders: partial ones are never touched."""

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from vmfixtures.backups.retention import clean, keep_tail, keep_thin

times_st = st.lists(st.integers(min_value=0, max_value=10**9), unique=True, max_size=80).map(sorted)
n_st = st.integers(min_value=1, max_value=25)


@given(times_st, n_st)
def test_thin_never_deletes_the_newest(times, n):
    if times:
        assert len(times) - 1 in keep_thin(times, n)


@given(times_st, n_st)
def test_thin_leaves_exactly_n_when_there_were_more(times, n):
    assert len(keep_thin(times, n)) == min(n, len(times))


@given(times_st, n_st)
def test_thin_is_deterministic_and_idempotent(times, n):
    kept = keep_thin(times, n)
    assert keep_thin(list(times), n) == kept
    survivors = [t for i, t in enumerate(times) if i in kept]
    assert keep_thin(survivors, n) == set(range(len(survivors)))


@given(times_st, st.integers(min_value=4, max_value=25))
def test_thin_keeps_the_oldest_when_it_thins_at_all(times, n):
    if len(times) > n:
        assert 0 in keep_thin(times, n)


@given(times_st, n_st)
def test_tail_keeps_the_newest_n(times, n):
    assert keep_tail(times, n) == set(range(max(0, len(times) - n), len(times)))


def test_thin_spacing_grows_with_age():
    hourly = [h * 3600.0 for h in range(200)]
    kept = sorted(keep_thin(hourly, 10))
    ages = [hourly[-1] - hourly[i] for i in reversed(kept)]  # newest first
    gaps = [b - a for a, b in zip(ages, ages[1:])]
    assert gaps[-1] > 10 * gaps[3], f"old gaps should be far wider than recent ones: {gaps}"
    assert all(later >= earlier for earlier, later in zip(gaps[2:], gaps[3:])), gaps


def make_snapshots(dest, count):
    start = datetime(2026, 1, 1)
    for i in range(count):
        (dest / (start + timedelta(hours=i)).strftime("%Y%m%dT%H%M%S.%f")).mkdir(parents=True)


@settings(deadline=None, max_examples=20)
@given(st.integers(min_value=0, max_value=30), n_st, st.sampled_from(["tail", "thin"]))
def test_clean_ignores_partial_folders(tmp_path_factory, count, n, method):
    dest = tmp_path_factory.mktemp("bk")
    make_snapshots(dest, count)
    (dest / "20990101T000000.000000-partial").mkdir()
    kept, deleted = clean(dest, method, n)
    assert (dest / "20990101T000000.000000-partial").is_dir()
    assert len(kept) == min(n, count) and len(kept) + len(deleted) == count
    assert all(not d.exists() for d in deleted) and all(k.is_dir() for k in kept)
