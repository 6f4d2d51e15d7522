"""Fixture daemon: leases, the warm pool, and what happens when runners or the daemon die."""

import os
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from behave import given, then, when

from vmfixtures import parallel
from vmfixtures.backends import VMState
from vmfixtures.client import ensure_daemon
from vmfixtures.paths import daemon_home
from vmfixtures.procs import process_alive, wait_exit
from vmfixtures.spec import load_config

_shared_pids = {}  # (lease, VM name) -> QEMU pid, across the scenarios of one shared lease

# A booted guest's uptime is below its process's age; a restored one's is above it by the template's uptime
# at its snapshot (a second or more under TCG). Both ages are read to the clock tick (10 ms).
RESTORED_MARGIN = 0.25


def _spec(context, name):
    return load_config(context.project.config_path).vm(name)


@given('the scenario leased the VM "{name}"')
@given('the shared VM "{name}" is running')
@when('the scenario leases the VM "{name}"')
def step_lease(context, name):
    context.created = context.fixtures.ensure_running([_spec(context, name)], context.lease)[0]
    context.pids[name] = context.host.vm_pid(context.driver.vm_dir(name))
    _shared_pids.setdefault((context.lease, name), context.pids[name])


@when("the lease ends")
def step_lease_ends(context):
    context.destroyed = context.client.end_lease(context.lease)
    context.lease = context.client.open_lease(scope="scenario", run_id=context.scope.id)["id"]


@when('the lease ends and the scenario leases the VM "{name}" again')
def step_lease_again(context, name):
    context.first_pid = context.pids[name]
    step_lease_ends(context)
    step_lease(context, name)


@then('the VM "{name}" was restored from a memory snapshot, not booted')
def step_restored(context, name):
    """A restored guest has been up longer than its VM process has existed: its clock went on
    from the snapshot (by the template's uptime then, a second or more). A booted guest is always
    younger than its process."""
    procs = context.host.vm_processes(context.driver.vm_dir(name))
    assert len(procs) == 1, f"expected one process for VM '{name}', found {[p.pid for p in procs]}"
    machine = context.driver.machine(name)
    uptime = float(machine.read_file("/proc/uptime").decode().split()[0])
    process_age = context.host.process_age(procs[0].pid)
    assert uptime > process_age + RESTORED_MARGIN, \
        f"expected the guest of '{name}' to have been up longer than its process (a restore), but it is up " \
        f"{uptime:.2f}s and its process is {process_age:.2f}s old"


@then('the VM "{name}" is a different VM process than before')
def step_different(context, name):
    assert context.pids[name] != context.first_pid, f"expected a new QEMU process, both are pid {context.first_pid}"
    assert not process_alive(context.first_pid), f"expected the first lease's QEMU pid {context.first_pid} gone"


@then('the guest of "{name}" has no note')
def step_no_note(context, name):
    r = context.driver.machine(name).execute("cat /root/note.txt")
    assert r.exit_code != 0, f"expected no note from the previous tenant, found {r.stdout!r}"


@when('scenario {turn:d} signs the guest book of "{name}"')
def step_sign(context, turn, name):
    context.driver.machine(name).succeed(f"echo 'scenario {turn}' >> /root/guestbook")


@then('the guest book of "{name}" holds the signatures of scenarios 1 to {turn:d}')
def step_guestbook(context, name, turn):
    lines = context.driver.machine(name).read_file("/root/guestbook").decode().splitlines()
    expected = [f"scenario {n}" for n in range(1, turn + 1)]
    assert lines == expected, f"expected the guest book {expected} (fresh VM, then shared), found {lines}"


@then('the VM "{name}" is the same VM process in every scenario that shares it')
def step_same_as_before(context, name):
    pid, first = context.host.vm_pid(context.driver.vm_dir(name)), _shared_pids[(context.lease, name)]
    assert pid == first, f"expected the shared VM's QEMU pid {first} from the first sharing scenario, got {pid}"


@given('another runner holds the VM "{name}" with a lease TTL of {ttl:d} seconds')
def step_other_runner(context, name, ttl):
    context.runner = context.sut.hold_lease(name, ttl)
    context.pids[name] = context.host.vm_pid(context.driver.vm_dir(name))


@when("that runner is killed with SIGKILL")
def step_kill_runner(context):
    context.runner.kill()


@then('within {seconds:d} seconds the VM "{name}" no longer exists')
def step_gone_within(context, seconds, name):
    lease = context.client.wait_lease_end(context.runner.lease_id, float(seconds))
    assert lease["state"] == "ended", f"expected the dead runner's lease ended within {seconds}s, it is {lease}"
    pid = context.pids[name]
    assert not process_alive(pid), f"expected QEMU pid {pid} of '{name}' gone with its lease"
    state = context.driver.state(name)
    assert state == VMState.MISSING, f"expected '{name}' removed after its QEMU exited, it is {state.value}"


@when("the daemon is killed with SIGKILL")
def step_kill_daemon(context):
    health = context.client.alive()
    os.kill(health["pid"], signal.SIGKILL)
    assert wait_exit(health["pid"], 10.0), f"daemon pid {health['pid']} survived SIGKILL"


@when("the daemon is started again")
def step_restart_daemon(context):
    context.client, context.daemon_start = ensure_daemon(extra_args=parallel.SPEC_DAEMON_ARGS)
    assert context.daemon_start, "expected a new daemon to start"
    context.started_daemon = context.started_daemon or context.daemon_start


@then('the daemon reports that it reclaimed the VM "{name}"')
def step_reclaimed(context, name):
    lines = context.daemon_start["reclaimed"]
    assert any(name in line for line in lines), f"expected '{name}' among what the daemon reclaimed: {lines}"


@then("the daemon's ledger agrees with the processes and files it owns")
def step_consistent(context):
    """Read the ledger file itself and the process table: every VM the ledger holds live has its
    process and disk, and every VM process under the storages it knows has a live row."""
    home = daemon_home()
    storages = [context.driver.storage, *(d for d in home.glob("pool*") if d.is_dir())]  # pool, pool-<backend>
    disagree = context.host.lasting_ledger_disagreements(ledger_path(), storages=storages)
    assert not disagree, f"expected ledger and reality to agree, they differ: {disagree}"


@when('two runners each hold the VM "{name}" at the same time')
def step_two_runners(context, name):
    context.runners = []
    with ThreadPoolExecutor(2) as pool:  # at the same time: both ask before either is served
        futures = [pool.submit(context.sut.hold_lease, name, 30, Path(tempfile.mkdtemp(dir=context.project.folder)))
                   for _ in range(2)]
        context.runners = [f.result() for f in futures]


@then("the two runners got different VM processes on different SSH ports")
def step_distinct(context):
    ports = [r.ssh_port for r in context.runners]
    # who listens on each runner's SSH port, by the host's socket table: the VM's own process
    pids = {pid for port in ports for _, pid in context.host.listeners(port) if pid}
    for r in context.runners:
        r.kill()
    assert len(set(ports)) == 2 and len(pids) == 2, f"expected two distinct VMs, got ports {ports}, pids {pids}"



def ledger_path():
    return daemon_home() / "ledger.sqlite"
