"""Folder backups: the operator backs up and cleans through the CLI; snapshots are checked on disk."""

import os
import signal
import subprocess
from datetime import datetime, timedelta

from behave import given, then, when

from vmfixtures.backups.folders import backup_once, snapshots


def _dest(context, folder):
    return context.project.folder / "backups" / folder


def _state(context, folder):
    """Every path in the backups with its inode, size and mtime: 'untouched' means all equal
    (a file rewritten in place changes size or mtime; a replaced one changes inode)."""
    dest = _dest(context, folder)
    if not dest.exists():
        return {}
    return {p.relative_to(dest).as_posix(): (st.st_ino, st.st_size, st.st_mtime_ns)
            for p in dest.rglob("*") for st in [p.lstat()]}


def _backup(context, source, folder):
    context.state_before = _state(context, folder)
    context.result = context.project.operator("backup-once", source, f"backups/{folder}")
    return context.result


@given('the operator backed up "{folder}" once')
def step_backed_up(context, folder):
    r = _backup(context, folder, folder)
    assert r.exit_code == 0, f"expected a backup of {folder}; {r.describe()}"


@when('the operator backs up "{folder}" once')
def step_backup(context, folder):
    _backup(context, folder, folder)


@when('the operator backs up "{source}" into the backups of "{folder}"')
def step_backup_into(context, source, folder):
    _backup(context, source, folder)


@then('there is {n:d} snapshot of "{folder}"')
@then('there are {n:d} snapshots of "{folder}"')
def step_count(context, n, folder):
    snaps = snapshots(_dest(context, folder))
    assert len(snaps) == n, f"expected {n} snapshot(s) of {folder}, found {[s.name for s in snaps]}; " \
                            f"{getattr(context, 'result', None) and context.result.describe()}"


@then('there is {n:d} snapshot in "{dest}"')
def step_count_in(context, n, dest):
    snaps = snapshots(context.project.folder / dest)
    assert len(snaps) == n, f"expected {n} snapshot(s) in {dest}, found {[s.name for s in snaps]}"


@then('the newest snapshot of "{folder}" holds "{name}" saying "{text}"')
def step_newest_holds(context, folder, name, text):
    path = snapshots(_dest(context, folder))[-1] / name
    assert path.read_text().strip() == text, f"expected {path} to say {text!r}, found {path.read_text()!r}"


@then('"{name}" is one and the same file in both snapshots of "{folder}"')
def step_same_inode(context, name, folder):
    a, b = (s / name for s in snapshots(_dest(context, folder))[-2:])
    assert a.stat().st_ino == b.stat().st_ino, f"expected {name} hard-linked between {a.parent.name} and {b.parent.name}"


@then('"{name}" differs between the snapshots of "{folder}"')
def step_differs(context, name, folder):
    a, b = (s / name for s in snapshots(_dest(context, folder))[-2:])
    assert a.stat().st_ino != b.stat().st_ino and a.read_text() != b.read_text(), f"expected {name} to differ"


@then("the operator is told that nothing changed")
def step_nothing_changed(context):
    r = context.result
    assert r.exit_code == 0 and "nothing changed" in r.stdout, f"expected 'nothing changed'; {r.describe()}"


@given('repeated backups of "{folder}" every second are running')
def step_repeated(context, folder):
    context.background = context.project.start("backup-repeated", folder, f"backups/{folder}", "--interval", "1")
    context.background.wait_for_line("snapshot")


@when("the repeated backups take a new snapshot")
def step_new_snapshot(context):
    context.background.wait_for_line("snapshot", timeout=30)


@when('repeated backups of the mount "{source}" are running')
def step_repeated_mount(context, source):
    context.background = context.project.start("backup-repeated-mount", source, "-c", str(context.project.config_path))
    context.background.wait_for_line("snapshot")


@when("repeated backups of every mount are running")
def step_repeated_all(context):
    context.background = context.project.start("backup-repeated-all", "-c", str(context.project.config_path))
    context.background.wait_for_line("snapshot", count=len(context.project.mounts))


@when("the repeated backups receive {name}")
def step_signal(context, name):
    context.background.signal(getattr(signal, name))


@then("the repeated backups stop with exit code {code:d}")
def step_stopped(context, code):
    r = context.background.finish()
    assert r.exit_code == code, f"expected exit code {code}; {r.describe()}"


@then('no partial snapshot of "{folder}" remains')
def step_no_partial(context, folder):
    partial = [p.name for p in _dest(context, folder).glob("*-partial")]
    assert not partial, f"expected no partial snapshot, found {partial}"


@given('the config mounts "{source}" at "{target}" in "{vm}" with backups to "{dest}" every second')
def step_mount_with_backups(context, source, target, vm, dest):
    if vm not in context.project.vms:
        context.project.declare_vm(vm)
    context.project.declare_mount(source, target, vm, backup=dest, interval=1)


@given('{n:d} snapshots of "{folder}" taken an hour apart')
def step_history(context, n, folder):
    source, start = context.project.folder / folder, datetime(2026, 1, 1)
    for i in range(n):
        (source / "counter.txt").write_text(f"{i}\n")
        backup_once(source, _dest(context, folder), now=start + timedelta(hours=i))
    context.history = [s.name for s in snapshots(_dest(context, folder))]
    assert len(context.history) == n, f"expected {n} snapshots to start with, made {context.history}"


@when('the operator keeps the last {n:d} snapshots of "{folder}"')
def step_tail(context, n, folder):
    context.result = context.project.operator("backup-clean", f"backups/{folder}", "tail", str(n))


@when('the operator thins the snapshots of "{folder}" to {n:d}')
def step_thin(context, folder, n):
    context.result = context.project.operator("backup-clean", f"backups/{folder}", "thin", str(n))


@then('the {n:d} newest of the {m:d} snapshots of "{folder}" remain')
def step_tail_kept(context, n, m, folder):
    kept = [s.name for s in snapshots(_dest(context, folder))]
    assert kept == context.history[-n:], f"expected the newest {n} kept, found {kept}; {context.result.describe()}"


@then('{n:d} snapshots of "{folder}" remain, the newest and the oldest among them')
def step_thin_kept(context, n, folder):
    kept = [s.name for s in snapshots(_dest(context, folder))]
    assert len(kept) == n and kept[-1] == context.history[-1] and kept[0] == context.history[0], \
        f"expected {n} kept including newest and oldest, found {kept}; {context.result.describe()}"


@then('the gaps between the kept snapshots of "{folder}" grow with age')
def step_gaps(context, folder):
    times = [datetime.strptime(s.name, "%Y%m%dT%H%M%S.%f") for s in snapshots(_dest(context, folder))]
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
    (_dest(context, folder) / "20991231T235959.000000").write_text("not a snapshot folder\n")


@then('the snapshots of "{folder}" are untouched')
def step_untouched(context, folder):
    assert _state(context, folder) == context.state_before, \
        f"expected the snapshots of {folder} untouched; {context.result.describe()}"
