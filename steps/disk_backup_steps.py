"""VM disk backups: taken and restored through the CLI; sizes and data checked for real."""

import json
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
    full, inc = _chain(context)["links"]
    assert inc["bytes"] < full["bytes"] / 2, f"expected the incremental ({inc['bytes']} B) under half the full " \
                                             f"({full['bytes']} B)"


@given('the full backup of "{name}" has gone missing')
def step_missing_link(context, name):
    Path(_chain(context)["links"][0]["file"]).unlink()


@when('the operator restores the backups of "{name}" as the VM "{new}"')
def step_restore(context, name, new):
    context.result = context.project.operator_on_config("vm", "restore-backup", _chain(context)["chain"], new)
    if context.result.exit_code == 0:
        context.pids[new] = context.driver.run_info(new)["pid"]
