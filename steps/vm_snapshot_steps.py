"""VM snapshots: saved and restored through the product; files and processes checked in the guest."""

from behave import given, then, when

from vmfixtures.sut.base import UNKNOWN_SNAPSHOT


@given('the operator saved the snapshot "{tag}" of "{name}"')
@when('the operator saves the snapshot "{tag}" of "{name}"')
def step_saved(context, tag, name):
    o = context.sut.save_snapshot(name, tag)
    assert o.done, f"expected the snapshot saved; {o.describe()}"


@when('the operator restores the snapshot "{tag}" of "{name}"')
def step_restore(context, tag, name):
    context.outcome = context.sut.restore_snapshot(name, tag)


def _pgrep(command):
    return f"pgrep -xf '{command}' >/dev/null"


@given('the guest of "{name}" runs the long process "{command}"')
def step_long_process(context, name, command):
    m = context.driver.machine(name)
    m.succeed(f"setsid {command} >/dev/null 2>&1 < /dev/null &")
    m.wait_until_succeeds(_pgrep(command), timeout=10)


@given('the guest of "{name}" stopped the process "{command}"')
def step_stop_process(context, name, command):
    m = context.driver.machine(name)
    m.succeed(f"pkill -xf '{command}'")
    m.wait_until_fails(_pgrep(command), timeout=10)


@then('the process "{command}" runs in the guest of "{name}"')
def step_process_runs(context, command, name):
    assert context.outcome.done, f"expected the restore to succeed; {context.outcome.describe()}"
    r = context.driver.machine(name).execute(_pgrep(command))
    assert r.ok, f"expected '{command}' running again in '{name}' right after the restore, pgrep: {r.describe()}"


@then('the restore is refused because there is no snapshot "{tag}"')
def step_no_snapshot(context, tag):
    o = context.outcome
    assert o.refused_for(UNKNOWN_SNAPSHOT, tag), f"expected the restore refused, naming the unknown snapshot " \
                                                 f"'{tag}'; {o.describe()}"
