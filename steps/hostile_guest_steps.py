"""A hostile guest costs the host bounded resources: the guest misbehaves as root (through its agent,
as the harness reaches it); the cost is measured on the host, by the host witness."""

import os
import time
from pathlib import Path

from behave import given, then, when

from vmfixtures.errors import VmfError

MiB = 1024**2

# -- the console -------------------------------------------------------------------------------------
def _print_console(context, vm) -> tuple:
    into = context.project.folder / f"console-{time.monotonic_ns()}.txt"
    run = context.sut.start_console(vm, into)
    peak = context.host.peak_memory(run.proc)
    outcome = context.sut.console_ended(run)
    size = into.stat().st_size if into.exists() else 0
    into.unlink(missing_ok=True)
    return outcome, peak, size

BUSY_GUEST = 0.2  # host processors a busy 1-cpu guest's VM uses at least, with other VMs beside it


@given('the operator has printed the console of "{vm}" while it was quiet')
def step_console_quiet(context, vm):
    o, context.quiet_peak, _ = _print_console(context, vm)
    assert o.done, f"expected the console printed; {o.describe()}"


FLOOD = r'''
import os
line, total = b"flooding the console without end, line after line\n", 0
with open("/dev/ttyS0", "wb", buffering=0) as tty:
    while True:
        tty.write(line * 1024)
        total += len(line) * 1024
        with open("/run/flooded.tmp", "w") as f:
            f.write(str(total))
        os.replace("/run/flooded.tmp", "/run/flooded")
'''


@given('the guest of "{vm}" has flooded its console with {mib:d} MiB, and goes on')
def step_console_flood(context, vm, mib):
    m = context.driver.machine(vm)
    m.write_file("/root/flood.py", FLOOD)
    m.succeed("setsid python3 /root/flood.py </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + context.driver.accel().scale(60)
    printed = 0
    while printed < mib * MiB:  # the guest counts what it printed: the host may keep less (a rotated log)
        assert time.monotonic() < deadline, f"the guest of '{vm}' printed only {printed} bytes to its console"
        time.sleep(0.5)
        r = m.execute(["cat", "/run/flooded"])
        printed = int(r.stdout) if r.ok and r.stdout.strip().isdigit() else 0


@when('the operator prints the console of "{vm}"')
def step_console_print(context, vm):
    context.outcome, context.flood_peak, context.printed = _print_console(context, vm)


@then("printing the flooded console took no more memory than printing the quiet one, give or take {mib:d} MiB")
def step_console_memory(context, mib):
    o = context.outcome
    assert o.done and not o.crashed, f"expected the console printed; {o.describe()}"
    grew = context.flood_peak - context.quiet_peak
    assert grew <= mib * MiB, (f"printing {context.printed >> 20} MiB of console took {grew / MiB:.1f} MiB more "
                               f"memory than a quiet console (peak {context.flood_peak >> 20} MiB against "
                               f"{context.quiet_peak >> 20} MiB)")


# -- the guest agent channel -------------------------------------------------------------------------
# Root in the guest stops qemu-ga and answers on its port itself: the sync request properly (so the
# host goes on to ask), every other request with the garbage chosen.
LYING_AGENT = r'''
import glob, json, os, sys, time
mode = sys.argv[1]
port = next("/dev/" + p.rsplit("/", 1)[1] for p in glob.glob("/sys/class/virtio-ports/*")
            if open(p + "/name").read().strip() == "org.qemu.guest_agent.0")
os.system("pkill -x qemu-ga")
time.sleep(0.3)
fd = os.open(port, os.O_RDWR)
with open("/dev/ttyS0", "w") as console:
    console.write("lying agent ready\n")
buf = b""
while True:
    data = os.read(fd, 65536)
    if not data:
        time.sleep(0.05)
        continue
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        try:
            req = json.loads(line)
        except ValueError:
            continue
        try:
            if req.get("execute") == "guest-sync-delimited":
                os.write(fd, b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
            elif req.get("execute") == "guest-sync":  # libvirt's
                os.write(fd, json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
            elif mode == "endless bytes":
                while True:
                    os.write(fd, b"A" * 65536)
            elif mode == "broken JSON":
                os.write(fd, b'{"return": {"pid": 12, \x00\x01 this is not JSON\n')
            else:
                os.write(fd, json.dumps({"return": {"pid": "twelve", "exited": "perhaps", "out-data": "*"}}).encode() + b"\n")
        except OSError:
            pass
'''
GARBAGE = ("endless bytes", "broken JSON", "answers of the wrong shape")


def _run_measured(context, vm, command):
    run = context.sut.start_command(vm, command.split())
    started = time.monotonic()
    peak = context.host.peak_memory(run.proc)
    outcome = context.sut.command_ended(run, timeout=120)
    return outcome, peak, time.monotonic() - started


@given('the operator has run "{command}" in "{vm}" while its agent was sound')
def step_run_sound(context, vm, command):
    o, context.sound_peak, _ = _run_measured(context, vm, command)
    assert o.done and o.data["exit_code"] == 0, f"expected `{command}` to run in '{vm}'; {o.describe()}"


@given('the guest of "{vm}" answers its agent channel with {garbage}')
def step_lying_agent(context, vm, garbage):
    assert garbage in GARBAGE, f"unknown garbage {garbage!r} (known: {', '.join(GARBAGE)})"
    m = context.driver.machine(vm)
    m.write_file("/root/lying-agent.py", LYING_AGENT)
    since = m.console.log_path.stat().st_size
    m.succeed(["sh", "-c", 'setsid python3 /root/lying-agent.py "$1" </dev/null >/dev/null 2>&1 &', "sh", garbage])
    m.wait_for_console("lying agent ready", timeout=context.driver.accel().scale(30), since=since)


@when('the operator runs "{command}" in "{vm}"')
def step_run_command(context, vm, command):
    context.outcome, context.command_peak, context.command_seconds = _run_measured(context, vm, command)


@then("the command fails with a clear error within {seconds:d} seconds, using at most {mib:d} MiB more memory than before")
def step_clear_error(context, seconds, mib):
    o = context.outcome
    assert not o.done and not o.crashed, f"expected the command refused or failed with a clear error; {o.describe()}"
    lines = [line for line in o.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line saying what went wrong, got {len(lines)}; {o.describe()}"
    assert context.command_seconds <= seconds, f"the command took {context.command_seconds:.0f}s; {o.describe()}"
    grew = context.command_peak - context.sound_peak
    assert grew <= mib * MiB, (f"the command's memory peaked {grew / MiB:.0f} MiB above a command on a sound "
                               f"agent ({context.command_peak >> 20} MiB against {context.sound_peak >> 20} MiB)")


@then('the harness, asking the guest of "{vm}" itself, gets a clear error and keeps its memory within {mib:d} MiB')
def step_harness_error(context, vm, mib):
    me = os.getpid()
    context.host.reset_peak_memory(me)
    before = context.host.peak_memory_now(me)
    started = time.monotonic()
    error = None
    try:
        context.driver.machine(vm).execute(["uname"], timeout=30)
    except VmfError as exc:
        error = exc
    seconds = time.monotonic() - started
    grew = context.host.peak_memory_now(me) - before
    assert error is not None, f"expected the harness's request to the lying agent of '{vm}' to fail"
    assert "\n" not in str(error), f"expected one line, got: {error}"
    assert seconds <= 45, f"the harness waited {seconds:.0f}s for its error: {error}"
    assert grew <= mib * MiB, f"asking the lying agent cost the harness {grew / MiB:.0f} MiB of memory ({error})"


# -- disk and processes --------------------------------------------------------------------------------
@when('the guest of "{vm}" writes its disk to the end and beyond')
def step_write_beyond(context, vm):
    """Raw writes from the last MiB of the block device on: the guest fills nothing for minutes, yet
    writes where a disk larger than declared would have room."""
    context.disk_write = context.driver.machine(vm).execute(
        'mib=$(( $(cat /sys/block/vda/size) / 2048 )); '
        'dd if=/dev/urandom of=/dev/vda bs=1M seek=$((mib - 1)) count=64 oflag=direct conv=fsync', timeout=120)


@then('the guest of "{vm}" was told that its disk is full')
def step_told_full(context, vm):
    r = context.disk_write
    assert not r.ok and "No space left on device" in r.stderr, f"expected the guest's write to fail for lack of " \
                                                               f"space at the end of its disk: {r.describe()}"


@then('the disk file of "{vm}" on the host can hold no more than the {size} its config declares')
def step_disk_bounded(context, vm, size):
    from vmfixtures.sizes import parse_size

    declared = parse_size(size, "size")
    folder = context.driver.vm_dir(vm).resolve()
    proc = context.host.vm_processes(folder)
    assert len(proc) == 1, f"expected one VM process for '{vm}', found {proc}"
    disks = {Path(f.path) for f in proc[0].open_files() if f.path.startswith(f"{folder}/") and
             f.path.endswith(".qcow2")}
    assert disks, f"expected the VM process of '{vm}' to hold its disk file in {folder}"
    for disk in disks:
        virtual, used = context.host.qcow2_size(disk), context.host.allocated(disk)
        assert virtual <= declared, f"{disk} lets the guest address {virtual} bytes, more than the {size} declared"
        assert used <= declared + 64 * MiB, f"{disk} occupies {used} bytes of the host's disk, over the {size} declared"


@when('the guest of "{vm}" forks without end')
def step_fork_bomb(context, vm):
    context.driver.machine(vm).succeed("setsid sh -c 'sleep 0.5; b() { b | b & }; b' </dev/null >/dev/null 2>&1 &")
    time.sleep(3)  # let it take the guest over


@then("the VM \"{vm}\" uses no more of the host's processors than its {cpus:d} cpu")
def step_cpu_bounded(context, vm, cpus):
    folder = context.driver.vm_dir(vm)
    vms = context.host.vm_processes(folder)
    assert len(vms) == 1, f"expected one VM process for '{vm}', found {[p.pid for p in vms]}"
    pids = {vms[0].pid} | {p.pid for p in context.host.processes_mentioning((folder / "run").resolve())}  # + network helper
    first, t0 = context.host.cpu_seconds(pids), time.monotonic()
    time.sleep(4)
    used = (context.host.cpu_seconds(pids) - first) / (time.monotonic() - t0)
    assert vms[0].is_running(), f"the VM process of '{vm}' (pid {vms[0].pid}) ended while its guest forked"
    assert used <= cpus + 0.4, f"the VM '{vm}' used {used:.2f} host processors while its guest forked without end " \
                               f"(it has {cpus})"
    # A guest that forks keeps its processor busy; an idle or stalled VM uses a few hundredths of one
    # (floor kept low: four features share two host cores).
    assert used >= BUSY_GUEST, f"expected the forking guest of '{vm}' to keep its processor busy, but its VM used " \
                               f"{used:.2f} host processors: the fork bomb did not run, or the guest stalled"
