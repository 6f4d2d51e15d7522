"""Observer: drift is created for real; the daemon's periodic observer must report it."""

import os
import shutil
import signal
import subprocess
import time

from behave import given, then, when

from vmfixtures.procs import wait_exit

OBSERVE_INTERVAL = 5.0  # the daemon's default


def _mark(context):
    """When the drift is complete: a pass that starts later must see it (one that started while the
    drift was being made may rightly miss it)."""
    context.drift_at = time.time()


def _next_reports(context, since, passes=1):
    """The first ``passes`` observer reports that started after ``since`` (waits for them)."""
    deadline = time.monotonic() + passes * OBSERVE_INTERVAL * 2 + 10
    found = []
    while len(found) < passes and time.monotonic() < deadline:
        last = max([r["number"] for r in found] or [0])
        for r in context.client.observer_reports(after=last, wait=OBSERVE_INTERVAL + 2):
            if r["started_at"] >= since and r not in found:
                found.append(r)
    assert len(found) >= passes, f"expected {passes} observer pass(es) after the drift, saw {found}"
    return found[:passes]


@when('the process of VM "{name}" is killed with SIGKILL')
def step_kill_qemu(context, name):
    pid = context.host.vm_pid(context.driver.vm_dir(name))
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid, 10.0), f"QEMU pid {pid} survived SIGKILL"
    _mark(context)


@when('the disk file of "{name}" is deleted')
def step_delete_disk(context, name):
    (context.driver.vm_dir(name) / "disk.qcow2").unlink()
    _mark(context)


@given("a stray VM process named like the project's runs in the storage")
@when("a stray VM process named like the project's runs in the storage")
def step_stray_qemu(context):
    folder = context.driver.storage / "stray-qemu"
    folder.mkdir()
    proc = subprocess.Popen(["qemu-system-x86_64", "-name", "guest=vmfx-stray", "-machine", "none", "-nodefaults",
                             "-display", "none", "-S"], cwd=folder, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context.add_cleanup(shutil.rmtree, folder, ignore_errors=True)
    context.add_cleanup(lambda: (proc.kill(), proc.wait()))  # cleanups run last-added first
    context.stray = proc
    _mark(context)


@when("a stray disk file is dropped into the storage")
def step_stray_file(context):
    stray = context.driver.storage / "stray.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stray), "1G"], check=True)
    context.add_cleanup(stray.unlink, missing_ok=True)
    _mark(context)


@when('the guest of "{name}" unmounts "{target}" on its own')
def step_guest_unmounts(context, name, target):
    context.driver.machine(name).succeed(["fusermount3", "-u", target])
    _mark(context)


@then('within one observer interval the observer reports "{kind}" for "{what}"')
def step_reported(context, kind, what):
    report = _next_reports(context, context.drift_at)[0]
    hits = [f for f in report["findings"] if f["type"] == kind and what in f["object"]]
    assert hits, f"expected the first observer pass after the drift to report {kind} for {what!r}: {report}"
    # One interval between passes, plus the pass before it (the loop waits an interval after each pass).
    late = report["started_at"] - context.drift_at
    assert late <= 2 * OBSERVE_INTERVAL, f"expected the report within one observer interval of the drift " \
                                         f"({OBSERVE_INTERVAL:.0f}s, plus a pass); it came {late:.1f}s after"
    assert all(f["evidence"] and f["fix"] for f in hits), f"expected evidence and a fix in each finding: {hits}"
    context.drift_reported = hits


@then('within one observer interval the observer reports "{kind}" for the stray VM process')
def step_reported_stray(context, kind):
    step_reported(context, kind, f"QEMU pid {context.stray.pid}")


@when("the forwarder is killed with SIGKILL")
def step_kill_forwarder(context):
    context.forwarder.signal(signal.SIGKILL)
    context.forwarder.proc.wait()
    _mark(context)


@when("the operator runs the observer with its safe fixes")
def step_observe_fix(context):
    context.outcome = context.sut.observe(fix=True)


@then("the observer says it killed the stray VM process")
def step_says_killed(context):
    o = context.outcome
    assert context.stray.pid in o.data["killed"], f"expected the fix to be reported; {o.describe()}"


@then("the stray VM process is gone")
def step_stray_gone(context):
    assert wait_exit(context.stray.pid, 10.0), f"expected the stray QEMU pid {context.stray.pid} killed, it runs"


@given('the process of VM "{name}" was killed and the observer reported "{kind}"')
def step_killed_and_reported(context, name, kind):
    step_kill_qemu(context, name)
    step_reported(context, kind, name)


@then("the next observer report is clean")
def step_clean(context):
    assert context.outcome.done, f"expected the VM to start; {context.outcome.describe()}"
    name = context.acted_on  # and it runs, by the process table and the guest itself: else a clean report says little
    context.host.vm_pid(context.driver.vm_dir(name))
    assert context.driver.machine(name).execute(["true"]).ok, f"expected the guest of '{name}' to answer after its start"
    report = _next_reports(context, time.time())[0]
    findings = [f for f in report["findings"] if context.scope.concerns(f.get("path"))]
    assert findings == [], f"expected a clean observer report after the recovery, got {report}"
