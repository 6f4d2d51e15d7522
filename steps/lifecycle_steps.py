"""VM lifecycle: the operator acts through the product; facts are checked on the host and in the guest."""

import time

from behave import given, then, when

from vmfixtures.backends import VMState
from vmfixtures.backends.qemu import run_dirs_of
from vmfixtures.procs import process_alive
from vmfixtures.spec import load_config
from vmfixtures.sut.base import BAD_CONFIG, CORRUPT, EXISTS, MISMATCH, UNKNOWN_VM

ACTIONS = {"creates": "create", "starts": "start", "stops": "stop", "restarts": "restart", "destroys": "destroy"}


def _names(text):
    return [n.strip().strip('"') for n in text.replace(" or ", " and ").split(" and ")]


def _boot_id(context, name):
    return context.driver.machine(name).read_file("/proc/sys/kernel/random/boot_id").decode().strip()


def _remember_pids(context):
    """Each VM's process, as the process table shows it (a process working in or holding its folder)."""
    for name in context.project.vms:
        procs = context.host.vm_processes(context.driver.vm_dir(name))
        if len(procs) == 1:
            context.pids[name] = procs[0].pid


@given('the VM "{name}" is running')
@given('the VMs {names} are running')
def step_vms_running(context, name=None, names=None):
    specs = [load_config(context.project.config_path).vm(n) for n in ([name] if name else _names(names))]
    context.fixtures.ensure_running(specs, context.lease)
    _remember_pids(context)


@given('the guest of "{name}" has saved the note "{note}"')
def step_save_note(context, name, note):
    context.driver.machine(name).succeed(f"echo '{note}' > /root/note.txt && sync")


@given('the operator stopped the VM "{name}"')
@given('the operator has stopped the VM "{name}"')
def step_has_stopped(context, name):
    o = context.sut.stop_vm(name)
    assert o.done, f"expected the VM '{name}' to stop; {o.describe()}"


@given('the disk of "{name}" has been damaged')
def step_damage_disk(context, name):
    with open(context.driver.vm_dir(name) / "disk.qcow2", "r+b") as disk:
        disk.write(b"not a qcow2 header")


@when('the operator {action} the VM "{name}"')
def step_operator_acts(context, action, name):
    _remember_pids(context)
    if action == "restarts":
        context.boot_ids[name] = _boot_id(context, name)
    context.acted_on = name
    context.console_before = _console_size(context, name)
    context.outcome = getattr(context.sut, f"{ACTIONS[action]}_vm")(name)


@when('the operator stops the VM "{name}" with a {seconds:d} second deadline')
def step_stop_with_deadline(context, name, seconds):
    _remember_pids(context)
    context.console_before = _console_size(context, name)
    started = time.monotonic()
    context.acted_on = name
    context.outcome = context.sut.stop_vm(name, deadline=seconds)
    context.stop_took, context.deadline = time.monotonic() - started, seconds


def _console_size(context, name):
    log = context.driver.vm_dir(name) / "console.log"
    return log.stat().st_size if log.exists() else 0


@given('the guest of "{name}" ignores the power button')
def step_ignore_acpi(context, name):
    context.driver.machine(name).succeed("busybox killall acpid")


@when("the operator {action} all VMs in the config")
def step_operator_acts_all(context, action):
    _remember_pids(context)
    context.outcome = getattr(context.sut, f"{ACTIONS[action]}_all_vms")()


@then('the VM "{name}" is running')
@then('the VMs {names} are running')
def step_is_running(context, name=None, names=None):
    """Running means: a VM process holds the VM's disk, and the guest inside answers."""
    for n in [name] if name else _names(names):
        what = getattr(context, "outcome", None) and context.outcome.describe()
        procs = context.host.vm_processes(context.driver.vm_dir(n))
        assert procs, f"expected a running process for VM '{n}', the process table has none; {what}"
        hostname = context.driver.machine(n).succeed("cat /proc/sys/kernel/hostname").strip()
        assert hostname == n, f"expected the guest of '{n}' to answer as '{n}', it answered '{hostname}'; {what}"


@then('the guest of "{name}" answers a command')
def step_guest_answers(context, name):
    hostname = context.driver.machine(name).succeed("cat /proc/sys/kernel/hostname").strip()
    assert hostname == name, f"expected the guest to report hostname '{name}', it said '{hostname}'"


@then('the VM "{name}" runs on the accelerator the harness reports')
def step_accelerator(context, name):
    report = context.sut.accelerator()
    reported = report.data or {}
    actual = context.driver.running_accel(name)
    assert report.done and actual == reported.get("name"), \
        f"expected QEMU to run on the reported accelerator; QEMU says {actual}; {report.describe()}"
    assert actual == "kvm" or "kvm" in reported.get("reason", "").lower(), \
        f"expected a reason why KVM is not used; {report.describe()}"


@then('the VM "{name}" is stopped')
@then('the VMs {names} are stopped')
def step_is_stopped(context, name=None, names=None):
    for n in [name] if name else _names(names):
        state = context.driver.state(n)
        assert state == VMState.STOPPED, f"expected VM '{n}' stopped, it is {state.value}; {context.outcome.describe()}"


@then('no VM process remains for {names}')
def step_no_processes(context, names):
    for n in _names(names):
        step_no_process(context, n)


def step_no_process(context, name):
    pid = context.pids.get(name)
    assert pid, f"no VM process of '{name}' was seen before the action (pids seen: {context.pids})"
    assert not process_alive(pid), f"expected VM process pid {pid} of '{name}' gone, it still runs"
    _no_vm_process(context, name)


def _no_vm_process(context, name):
    """By the process table: no VM process works in the VM's folder or holds a file of it open."""
    ours = [p.pid for p in context.host.vm_processes(context.driver.vm_dir(name))]
    assert not ours, f"expected no VM process for '{name}', found pids {ours}"


def _no_folder(context, name):
    vm_dir = context.driver.vm_dir(name)
    assert not vm_dir.exists(), f"expected no folder for VM '{name}', it holds {[p.name for p in vm_dir.rglob('*')]}"


@then("the guest powered off on its own, without being forced")
def step_graceful(context):
    assert context.outcome.done, f"expected the stop to succeed; {context.outcome.describe()}"
    name = context.acted_on
    with open(context.driver.vm_dir(name) / "console.log", "rb") as f:
        f.seek(context.console_before)  # this stop's output only: the log keeps every boot's
        log = f.read().decode(errors="replace")
    assert "vmfixtures: power off" in log, f"expected the guest's shutdown line on the console during this stop; " \
                                           f"it wrote: {log[-300:]!r}"


@then('the guest of "{name}" still has the note "{note}"')
def step_note_kept(context, name, note):
    text = context.driver.machine(name).read_file("/root/note.txt").decode().strip()
    assert text == note, f"expected the note '{note}' after the restart, found '{text}'"


@then('the VM "{name}" no longer exists')
@then('the VMs {names} no longer exist')
@then('the VM "{name}" does not exist')
def step_missing(context, name=None, names=None):
    for n in [name] if name else _names(names):
        assert context.driver.state(n) == VMState.MISSING, f"expected no VM '{n}', it is {context.driver.state(n).value}"
        # and by the host: the record is written last, so a half-made VM's folder and process say more
        _no_vm_process(context, n)
        _no_folder(context, n)


@then('no VM process or disk file remains for {names}')
def step_nothing_left(context, names):
    for n in _names(names):
        step_no_process(context, n)
        _no_folder(context, n)
        if context.client is not None:  # the daemon's ledger must agree
            rows = [v for v in context.client.vms() if v["name"] == n and v["storage"] == str(context.driver.storage)]
            assert not rows, f"expected the ledger to hold no live VM '{n}', it holds {rows}"


@then('the operator is told that "{name}" already exists')
def step_told_exists(context, name):
    o = context.outcome
    assert o.done and o.note == EXISTS and o.subject == name, \
        f"expected success, telling that '{name}' already exists; {o.describe()}"


@then('the VM "{name}" is still the same running VM')
def step_same_vm(context, name):
    now = [p.pid for p in context.host.vm_processes(context.driver.vm_dir(name))]
    assert now == [context.pids[name]], f"expected VM process pid {context.pids[name]} untouched, now {now}"
    assert context.driver.state(name) == VMState.RUNNING, f"expected '{name}' still running"


@then("the operator is told of a mismatch:")
def step_told_mismatch(context):
    o = context.outcome
    assert o.refused_for(MISMATCH, context.acted_on), f"expected a refusal for a mismatch; {o.describe()}"
    for row in context.table:
        told = o.differences.get(row["field"])
        assert told == (row["existing"], row["requested"]), \
            f"expected to be told {row['field']}: existing {row['existing']}, requested {row['requested']}; " \
            f"{o.describe()}"


@then('the command fails with a config error at line {line:d} of the config for "{field}"')
def step_config_error(context, line, field):
    o = context.outcome
    where = (str(context.project.config_path), line)
    assert o.refused_for(BAD_CONFIG) and o.where == where and o.config_field == field, \
        f"expected a config error naming {where[0]}:{line} and {field}; {o.describe()}"


@then('the command fails because no VM named "{name}" exists')
def step_no_such_vm(context, name):
    o = context.outcome
    assert o.refused_for(UNKNOWN_VM, name), f"expected a refusal naming the unknown VM '{name}'; {o.describe()}"


@then("the start is refused because the VM's disk is damaged")
def step_disk_damaged(context):
    o = context.outcome
    assert o.refused_for(CORRUPT), f"expected the start refused for a damaged disk; {o.describe()}"


@then('the guest of "{name}" booted afresh')
def step_booted_afresh(context, name):
    before, after = context.boot_ids.get(name), _boot_id(context, name)
    assert before and after != before, f"expected a new guest boot of '{name}', boot id stayed {before}"
    now = [p.pid for p in context.host.vm_processes(context.driver.vm_dir(name))]
    assert len(now) == 1 and now[0] != context.pids[name], \
        f"expected a new VM process for '{name}', had pid {context.pids[name]}, now {now}"


@then("the guest was forced off after the deadline")
def step_forced(context):
    """Forced: the stop succeeded, took at least the deadline, and the guest never shut itself down
    (its shutdown line is absent from what its console printed since)."""
    o = context.outcome
    name = context.acted_on
    with open(context.driver.vm_dir(name) / "console.log", "rb") as log:
        log.seek(context.console_before)
        since = log.read().decode(errors="replace")
    assert o.done and context.stop_took >= context.deadline, \
        f"expected the stop to wait out the {context.deadline}s deadline, it took {context.stop_took:.1f}s; {o.describe()}"
    assert "vmfixtures: power off" not in since, f"expected no shutdown by the guest, its console shows one: {since[-300:]!r}"


@then('no VM process or socket remains for "{name}"')
def step_no_process_or_socket(context, name):
    step_no_processes(context, f'"{name}"')
    assert not (context.driver.vm_dir(name) / "run").exists(), f"expected the sockets of '{name}' removed"
    left = [d for d in run_dirs_of(context.driver.storage) if (d / "vm_dir").read_text().endswith(f"/{name}")]
    assert not left, f"expected no socket folder for '{name}', found {left}"
