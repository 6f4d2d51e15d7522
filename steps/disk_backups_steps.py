"""VM disk backups: taken and restored through the product; sizes and data checked for real."""

from datetime import datetime
from pathlib import Path

from behave import given, then, when

from vmfixtures.sut.base import BROKEN_CHAIN, NOT_RUNNING, UNKNOWN_VM


def _dest(context):
    return context.project.folder / "disk-backups"


def _chains(context):
    """The backup chains, oldest first, as the product lists them."""
    o = context.sut.disk_backups(_dest(context))
    assert o.done, f"expected the backup status; {o.describe()}"
    return o.data


def _chain(context):
    found = _chains(context)
    assert found, "expected a backup chain in disk-backups"
    return found[-1]


def _backup(context, name, **how):
    o = context.sut.disk_backup(name, _dest(context), **how)
    assert o.done, f"expected a disk backup of '{name}'; {o.describe()}"


@given('the operator took a backup of "{name}"')
@when('the operator takes a backup of "{name}"')
def step_backup(context, name):
    _backup(context, name)


@when('the guest of "{name}" writes 1 MB of new data')
def step_write_mb(context, name):
    context.driver.machine(name).succeed("dd if=/dev/urandom of=/root/new.bin bs=1M count=1 status=none && sync")


@then('the second backup of "{name}" is incremental')
def step_incremental(context, name):
    kinds = [link["kind"] for link in _chain(context)["links"]]
    assert kinds == ["full", "incremental"], f"expected a full then an incremental backup, found {kinds}"


@then('the incremental backup of "{name}" is less than half the size of the full one')
def step_sizes(context, name):
    """Sizes as the file system counts them (allocated blocks) of the chain's files, oldest first."""
    chain = Path(_chain(context)["chain"])
    files = sorted((p for p in chain.iterdir() if p.is_file() and p.suffix == ".qcow2"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2, f"expected two backup files in {chain}, found {[p.name for p in files]}"
    full, inc = (p.stat().st_blocks * 512 for p in files)
    assert inc < full / 2, f"expected the incremental ({inc} B on disk) under half the full ({full} B on disk)"


@given('the full backup of "{name}" has gone missing')
def step_missing_link(context, name):
    Path(_chain(context)["links"][0]["file"]).unlink()


@when('the operator restores the backups of "{name}" as the VM "{new}"')
def step_restore(context, name, new):
    context.outcome = context.sut.restore_disk_backup(_chain(context)["chain"], new)
    if context.outcome.done:
        context.pids[new] = [p.pid for p in context.host.vm_processes(context.driver.vm_dir(new))][0]


@when('the operator takes a backup of "{name}" grouped by {period}')
def step_backup_period(context, name, period):
    _backup(context, name, group_by=period)


@then("the backups hold one chain, named after the current {period}, with a full and an incremental link")
def step_one_chain(context, period):
    found = _chains(context)
    now = datetime.now()  # the period's name, worked out here: year-month, year-Qn, year-Hn or the year
    expected = {"month": f"{now.year}-{now.month:02d}", "quarter": f"{now.year}-Q{(now.month - 1) // 3 + 1}",
                "half-year": f"{now.year}-H{1 if now.month <= 6 else 2}", "year": str(now.year)}[period]
    seen = [(Path(c["chain"]).name, [l["kind"] for l in c["links"]]) for c in found]
    assert seen == [(expected, ["full", "incremental"])], f"expected one chain {expected} (full, incremental): {seen}"


@given('the operator took {n:d} full backups of "{name}"')
def step_full_backups(context, n, name):
    for _ in range(n):
        _backup(context, name, full=True)
    context.chains_before = [c["chain"] for c in sorted(_chains(context), key=lambda c: c["links"][0]["at"])]


@when("the operator keeps only the newest backup chain")
def step_prune(context):
    context.outcome = context.sut.prune_disk_backups(_dest(context), keep=1)
    assert context.outcome.done, f"expected the prune to work; {context.outcome.describe()}"


@then("only the newest of the {n:d} backup chains remains")
def step_newest_remains(context, n):
    before, after = context.chains_before, [c["chain"] for c in _chains(context)]
    newest = before[-1]  # oldest first
    assert len(before) == n and after == [newest], f"expected only the newest of {before} left, found {after}"
    assert all(not Path(c).exists() for c in before if c != newest), "expected the older chains deleted whole"


@when('the operator scrubs the backup bitmap of "{name}"')
def step_scrub(context, name):
    o = context.sut.scrub_backup_bitmap(name)
    assert o.done and o.note is None, f"expected the bitmap removed; {o.describe()}"


@then("the newest backup starts a new chain with a full link")
def step_new_full_chain(context):
    found = _chains(context)
    kinds = [[l["kind"] for l in c["links"]] for c in found]
    assert kinds == [["full"], ["full"]], f"expected two chains of one full backup each, found {kinds}"


@given("nothing else")
def step_nothing_else(context):
    pass


@when('the operator tries to back up "{name}"')
def step_try_backup(context, name):
    context.outcome = context.sut.disk_backup(name, _dest(context))


@then("the restore is refused because the backup chain has a missing link")
def step_refused_missing_link(context):
    o = context.outcome
    assert o.refused_for(BROKEN_CHAIN), f"expected the restore refused for a missing link; {o.describe()}"


@then('the disk backup is refused because no VM named "{name}" exists')
def step_refused_unknown(context, name):
    o = context.outcome
    assert o.refused_for(UNKNOWN_VM, name), f"expected the backup refused, naming the unknown VM '{name}'; " \
                                            f"{o.describe()}"


@then('the disk backup is refused because "{name}" is not running')
def step_refused_not_running(context, name):
    o = context.outcome
    assert o.refused_for(NOT_RUNNING, name), f"expected the backup refused, '{name}' not running; {o.describe()}"
