"""VM disk backups: taken and restored through the CLI; sizes and data checked for real."""

import json
from datetime import datetime
from pathlib import Path

from behave import given, then, when



def _chain(context):
    found = json.loads(context.project.operator("vm", "backup-status", "disk-backups", "--json").stdout)
    assert found, "expected a backup chain in disk-backups"
    return found[-1]


@given('the operator took a backup of "{name}"')
@when('the operator takes a backup of "{name}"')
def step_backup(context, name):
    r = context.project.operator("vm", "backup", name, "disk-backups")
    assert r.exit_code == 0, f"expected a disk backup of '{name}'; {r.describe()}"


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
    context.result = context.project.operator_on_config("vm", "restore-backup", _chain(context)["chain"], new)
    if context.result.exit_code == 0:
        context.pids[new] = [p.pid for p in context.host.vm_processes(context.driver.vm_dir(new))][0]


def _chains(context):
    r = context.project.operator("vm", "backup-status", "disk-backups", "--json")
    assert r.exit_code == 0, f"expected the backup status; {r.describe()}"
    return json.loads(r.stdout)


@when('the operator takes a backup of "{name}" grouped by {period}')
def step_backup_period(context, name, period):
    r = context.project.operator("vm", "backup", name, "disk-backups", "--group-by", period)
    assert r.exit_code == 0, f"expected a disk backup of '{name}'; {r.describe()}"


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
        r = context.project.operator("vm", "backup", name, "disk-backups", "--full")
        assert r.exit_code == 0, f"expected a full backup of '{name}'; {r.describe()}"
    context.chains_before = [c["chain"] for c in sorted(_chains(context), key=lambda c: c["links"][0]["at"])]


@when("the operator keeps only the newest backup chain")
def step_prune(context):
    context.result = context.project.operator("vm", "backup-prune", "disk-backups", "--keep", "1")
    assert context.result.exit_code == 0, f"expected the prune to work; {context.result.describe()}"


@then("only the newest of the {n:d} backup chains remains")
def step_newest_remains(context, n):
    before, after = context.chains_before, [c["chain"] for c in _chains(context)]
    newest = before[-1]  # oldest first
    assert len(before) == n and after == [newest], f"expected only the newest of {before} left, found {after}"
    assert all(not Path(c).exists() for c in before if c != newest), "expected the older chains deleted whole"


@when('the operator scrubs the backup bitmap of "{name}"')
def step_scrub(context, name):
    r = context.project.operator("vm", "backup-scrub", name)
    assert r.exit_code == 0 and "removed" in r.stdout, f"expected the bitmap removed; {r.describe()}"


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
    context.result = context.project.operator("vm", "backup", name, "disk-backups")


@then('the command fails with exit code {code:d} saying "{words}"')
def step_fails_with_code(context, code, words):
    r = context.result
    assert r.exit_code == code and words in r.stderr, f"expected exit code {code} and {words!r}; {r.describe()}"
