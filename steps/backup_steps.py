"""Folder backups: the operator acts through the product; snapshots are judged on disk by the host."""

import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

from behave import given, then, when

from vmfixtures.sut.base import CORRUPT, MISSING_SOURCE, NOT_WRITABLE

REASONS = {"the folder does not exist": MISSING_SOURCE, "the destination is not writable": NOT_WRITABLE,
           "a snapshot is corrupt": CORRUPT}


def _dest(context, folder):
    return context.project.folder / "backups" / folder


def _snapshots(context, folder):
    return context.host.snapshots(_dest(context, folder))


def _backup(context, source, folder, at=None):
    context.state_before = context.host.tree(_dest(context, folder))
    context.outcome = context.sut.backup_once(context.project.folder / source, _dest(context, folder), at=at)
    return context.outcome


def _wait_snapshots(context, dest, at_least):
    """Until ``dest`` holds ``at_least`` complete snapshots, as the file system shows them
    (within two of the product's shortest intervals, and at least 30 s)."""
    timeout = max(30.0, 2 * context.sut.min_interval + 10)
    deadline = time.monotonic() + timeout
    while len(context.host.snapshots(dest)) < at_least:
        background = context.background
        assert background.proc.poll() is None, \
            f"the repeated backups exited {background.proc.returncode}: {background.stderr().strip()[-500:]}"
        assert time.monotonic() < deadline, \
            f"expected {at_least} snapshot(s) in {dest} within {timeout:.0f}s, found {context.host.snapshots(dest)}"
        time.sleep(0.05)


@given('the operator backed up "{folder}" once')
def step_backed_up(context, folder):
    o = _backup(context, folder, folder)
    assert o.done, f"expected a backup of {folder}; {o.describe()}"


@when('the operator backs up "{folder}" once')
def step_backup(context, folder):
    _backup(context, folder, folder)


@when('the operator backs up "{source}" into the backups of "{folder}"')
def step_backup_into(context, source, folder):
    _backup(context, source, folder)


@then("the backup succeeds")
def step_succeeds(context):
    assert context.outcome.done, f"expected the backup to succeed; {context.outcome.describe()}"


@then('there is {n:d} snapshot of "{folder}"')
@then('there are {n:d} snapshots of "{folder}"')
def step_count(context, n, folder):
    snaps = _snapshots(context, folder)
    outcome = getattr(context, "outcome", None)
    assert len(snaps) == n, f"expected {n} snapshot(s) of {folder}, found {[s.name for s in snaps]}; " \
                            f"{outcome.describe() if outcome else ''}"


@then('there is {n:d} snapshot in "{dest}"')
def step_count_in(context, n, dest):
    snaps = context.host.snapshots(context.project.folder / dest)
    assert len(snaps) == n, f"expected {n} snapshot(s) in {dest}, found {[s.name for s in snaps]}"


@then('the newest snapshot of "{folder}" holds "{name}" saying "{text}"')
def step_newest_holds(context, folder, name, text):
    snaps = _snapshots(context, folder)
    assert snaps, f"expected a snapshot of {folder}, found none; {context.outcome.describe()}"
    path = snaps[-1] / name
    assert path.is_file() and path.read_text().strip() == text, \
        f"expected {path} to say {text!r}, found {path.read_text() if path.is_file() else 'no file'!r}"


def _last_two(context, name, folder):
    snaps = _snapshots(context, folder)
    assert len(snaps) >= 2, f"expected two snapshots of {folder} to compare, found {[s.name for s in snaps]}"
    return snaps[-2] / name, snaps[-1] / name


@then('"{name}" is one and the same file in both snapshots of "{folder}"')
def step_same_inode(context, name, folder):
    a, b = _last_two(context, name, folder)
    assert context.host.same_file(a, b), f"expected {name} hard-linked between {a.parent.name} and {b.parent.name}"


@then('"{name}" differs between the snapshots of "{folder}"')
def step_differs(context, name, folder):
    a, b = _last_two(context, name, folder)
    assert not context.host.same_file(a, b) and a.read_text() != b.read_text(), \
        f"expected {name} to differ between {a.parent.name} and {b.parent.name}; both say {a.read_text()[:80]!r}" \
        + (" (one file, hard-linked)" if context.host.same_file(a, b) else "")


@given('repeated backups of "{folder}" every second are running')
def step_repeated(context, folder):
    context.background = context.sut.backup_repeated(context.project.folder / folder, _dest(context, folder), 1)
    _wait_snapshots(context, _dest(context, folder), 1)
    context.repeated_dest = _dest(context, folder)


@when("the repeated backups take a new snapshot")
def step_new_snapshot(context):
    _wait_snapshots(context, context.repeated_dest, len(context.host.snapshots(context.repeated_dest)) + 1)


@when('repeated backups of the mount "{source}" are running')
def step_repeated_mount(context, source):
    context.background = context.sut.backup_repeated_mount(source)
    mount = next(m for m in context.project.mounts if m["source"] == source)
    _wait_snapshots(context, context.project.folder / mount["backup"], 1)


@when("repeated backups of every mount are running")
def step_repeated_all(context):
    context.background = context.sut.backup_repeated_all()
    for mount in context.project.mounts:
        _wait_snapshots(context, context.project.folder / mount["backup"], 1)


@when("the repeated backups receive {name}")
def step_signal(context, name):
    context.background.signal(getattr(signal, name))


@then("the repeated backups stop with exit code {code:d}")
def step_stopped(context, code):
    r = context.background.finish()
    assert r.exit_code == code, f"expected exit code {code}; {r.describe()}"


@then('no partial snapshot of "{folder}" remains')
def step_no_partial(context, folder):
    partial = [p.name for p in context.host.partial_snapshots(_dest(context, folder))]
    assert not partial, f"expected no partial snapshot, found {partial}"


@given('the config mounts "{source}" at "{target}" in "{vm}" with backups to "{dest}" every second')
def step_mount_with_backups(context, source, target, vm, dest):
    if vm not in context.project.vms:
        context.project.declare_vm(vm)
    context.project.declare_mount(source, target, vm, backup=dest, interval=1)


@given('{n:d} snapshots of "{folder}" taken an hour apart')
def step_history(context, n, folder):
    """Real backups by the product, its clock set an hour further each time (libfaketime);
    which folder each one made is seen on disk, so the times below are ours, not the product's."""
    source, start = context.project.folder / folder, datetime(2026, 1, 1)
    context.history = []  # (snapshot folder name, when it was taken), oldest first
    for i in range(n):
        (source / "counter.txt").write_text(f"{i}\n")
        before = {s.name for s in _snapshots(context, folder)}
        o = _backup(context, folder, folder, at=start + timedelta(hours=i))
        made = [s.name for s in _snapshots(context, folder) if s.name not in before]
        assert o.done and len(made) == 1, f"expected backup {i + 1} of {n} to add one snapshot, it added " \
                                          f"{made}; {o.describe()}"
        context.history.append((made[0], start + timedelta(hours=i)))


@when('the operator keeps the last {n:d} snapshots of "{folder}"')
def step_tail(context, n, folder):
    context.outcome = context.sut.clean_tail(context.project.folder / folder, _dest(context, folder), n)


@when('the operator thins the snapshots of "{folder}" to {n:d}')
def step_thin(context, folder, n):
    context.outcome = context.sut.clean_thin(context.project.folder / folder, _dest(context, folder), n)


@then('the {n:d} newest of the {m:d} snapshots of "{folder}" remain')
def step_tail_kept(context, n, m, folder):
    kept = {s.name for s in _snapshots(context, folder)}
    newest = {name for name, _ in context.history[-n:]}
    assert kept == newest, f"expected the newest {n} kept ({sorted(newest)}), found {sorted(kept)}; " \
                           f"{context.outcome.describe()}"


@then('{n:d} snapshots of "{folder}" remain, the newest and the oldest among them')
def step_thin_kept(context, n, folder):
    kept = {s.name for s in _snapshots(context, folder)}
    oldest, newest = context.history[0][0], context.history[-1][0]
    assert len(kept) == n and {oldest, newest} <= kept, \
        f"expected {n} kept including the newest and the oldest, found {sorted(kept)}; {context.outcome.describe()}"


@then('the gaps between the kept snapshots of "{folder}" grow with age')
def step_gaps(context, folder):
    kept = {s.name for s in _snapshots(context, folder)}
    times = [when for name, when in context.history if name in kept]
    gaps = [(b - a).total_seconds() / 3600 for a, b in zip(times, times[1:])][::-1]  # newest first, in hours
    assert all(x <= y for x, y in zip(gaps, gaps[1:])) and gaps[-1] > gaps[0], \
        f"expected gaps (newest first) to grow with age, found {gaps}"


@given('the backups of "{folder}" are read-only')
def step_read_only(context, folder):
    dest = _dest(context, folder)
    if os.geteuid() == 0:  # root ignores permission bits; the immutable attribute stops it too
        subprocess.run(["chattr", "+i", str(dest)], check=True)
        context.add_cleanup(subprocess.run, ["chattr", "-i", str(dest)], check=True)
    else:
        dest.chmod(0o555)
        context.add_cleanup(dest.chmod, 0o755)


@given('a corrupt snapshot lies among the backups of "{folder}"')
def step_corrupt(context, folder):
    # a file where the product would expect its newest snapshot folder
    (_dest(context, folder) / context.sut.snapshot_name(datetime(2099, 12, 31, 23, 59, 59))).write_text(
        "not a snapshot folder\n")


@then("the backup is refused because {reason}")
def step_refused(context, reason):
    kind = REASONS[reason]
    o = context.outcome
    assert o.status == "refused" and o.refusal == kind, f"expected the backup refused ({kind}); {o.describe()}"


@then('the snapshots of "{folder}" are untouched')
def step_untouched(context, folder):
    assert context.host.tree(_dest(context, folder)) == context.state_before, \
        f"expected the snapshots of {folder} untouched; {context.outcome.describe()}"


@given('the project folder "{folder}" holds {n:d} small files')
def step_many_files(context, folder, n):
    tree = context.project.folder / folder / "many"
    tree.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (tree / f"f{i:05d}.txt").write_text(f"{i}\n")


@when('a backup of "{folder}" is killed while it copies')
def step_kill_midway(context, folder):
    """SIGKILL the backup as soon as anything of the new snapshot is on disk (no grace, no cleanup)."""
    dest = _dest(context, folder)
    backup = context.sut.start_backup_once(context.project.folder / folder, dest)
    deadline = time.monotonic() + 30
    while not (dest.is_dir() and any(p.is_dir() for p in dest.iterdir() if not p.name.startswith("."))):
        assert backup.proc.poll() is None, f"the backup ended before it could be interrupted: {backup.stderr()}"
        assert time.monotonic() < deadline, "no snapshot folder appeared within 30 s"
        time.sleep(0.005)
    backup.proc.kill()
    code = backup.proc.wait()
    # Killed, not finished: a backup done before the kill interrupted nothing, and the Then steps would
    # judge a whole snapshot.
    assert code == -signal.SIGKILL, f"expected the backup killed while it copied; it had ended by itself " \
                                    f"(exit {code}) before the kill"


@then('every snapshot of "{folder}" holds all {n:d} files')
def step_complete_snapshots(context, folder, n):
    for snap in _snapshots(context, folder):
        files = [p for p in snap.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert len(files) == n, f"snapshot {snap.name} looks complete but holds {len(files)} of {n} files"


@then('after the next backup of "{folder}" no partial snapshot of "{folder2}" remains')
def step_next_backup_cleans(context, folder, folder2):
    o = _backup(context, folder, folder)
    assert o.done, f"expected the next backup to work; {o.describe()}"
    partial = [p.name for p in context.host.partial_snapshots(_dest(context, folder2))]
    assert not partial, f"expected the leftover of the killed backup removed, found {partial}"
    step_complete_snapshots(context, folder, sum(1 for p in (context.project.folder / folder).rglob("*") if p.is_file()))
