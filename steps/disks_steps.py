"""Data disks: created, attached, detached and deleted through the product; judged in the guest
(its own /sys/block, a file system written on the disk), in the host's process table (the VM's
process, the files it holds open) and on disk.

Reusable by other features (a complete workflow): every step names its VM and disk, and what the
host witnessed about a disk (its file, its device in the guest) is kept in ``context.disks``.
"""

import re
import subprocess
import time

from behave import given, then, when

from vmfixtures.sut.base import BUSY, NOTHING_CHANGED, UNKNOWN_DISK

UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}
MOUNT = "/mnt/vmfx-disk-check"


def _bytes(size):
    """'64M' -> bytes, worked out here (never with the product's own size parser)."""
    m = re.fullmatch(r"(\d+)([KMG])", size)
    assert m, f"a size in this feature is a number and K, M or G, not {size!r}"
    return int(m[1]) * UNITS[m[2]]


def _state(context, key):
    """A dict kept on the context for this scenario (behave drops it when the scenario ends)."""
    if getattr(context, key, None) is None:
        setattr(context, key, {})
    return getattr(context, key)


def _disks(context):
    return _state(context, "disks")


def _guest(context, vm):
    return context.driver.machine(vm)


def _devices(context, vm):
    return context.host.guest_block_devices(_guest(context, vm))


def _folder(context, vm):
    return context.driver.vm_dir(vm)


def _witness_vm(context, vm):
    """Remember the VM's process (pid + start time) and its guest's boot, once per scenario."""
    seen = _state(context, "vm_identity")
    if vm not in seen:
        boot_id = _guest(context, vm).read_file("/proc/sys/kernel/random/boot_id").decode().strip()
        seen[vm] = (context.host.vm_process_id(_folder(context, vm)), boot_id)
        _state(context, "devices_before")[vm] = set(_devices(context, vm))
        _state(context, "files_before")[vm] = context.host.vm_open_disks(_folder(context, vm))


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


# -- acting through the product ----------------------------------------------------------------
@given('the operator created the disk "{disk}" of {size}')
@when('the operator creates the disk "{disk}" of {size}')
def step_created(context, disk, size):
    o = context.sut.create_disk(disk, _bytes(size))
    assert o.done, f"expected the disk '{disk}' created; {o.describe()}"
    _disks(context)[disk] = {"size": _bytes(size)}


@when('the operator attaches the disk "{disk}" to "{vm}"')
@given('the operator attached the disk "{disk}" to "{vm}"')
def step_attach(context, disk, vm):
    _witness_vm(context, vm)
    before = set(_devices(context, vm))
    files_before = context.host.vm_open_disks(_folder(context, vm))
    context.outcome = context.sut.attach_disk(disk, vm)
    if context.outcome.done and context.outcome.note != NOTHING_CHANGED:
        _seen_attached(context, disk, vm, before, files_before)


def _seen_attached(context, disk, vm, before, files_before):
    """What the host and the guest show of a disk just attached: the new guest device, and the one
    file the VM process opened for it (its other open images, backing files included, were open before)."""
    info = _disks(context).setdefault(disk, {})
    new = _wait(lambda: set(_devices(context, vm)) - before, 30, "a new block device")
    opened = context.host.vm_open_disks(_folder(context, vm)) - files_before
    info.update(vm=vm, device=next(iter(new)) if len(new) == 1 else None,
                file=next(iter(opened)) if len(opened) == 1 else None,
                seen=f"new guest devices {sorted(new)} (before: {sorted(before)}), new files the VM process "
                     f"opened {sorted(map(str, opened))}")


def _device(context, disk):
    """The guest device the host saw appear for ``disk``; fails naming what was seen instead."""
    info = _disks(context).get(disk, {})
    assert info.get("device"), f"expected one new block device for the disk '{disk}' in its guest: " \
                               f"{info.get('seen', 'never attached')}; {context.outcome.describe()}"
    return info["device"]


def _file(context, disk):
    info = _disks(context).get(disk, {})
    assert info.get("file"), f"expected the VM process to have opened one new file for the disk '{disk}': " \
                             f"{info.get('seen', 'never attached')}; {context.outcome.describe()}"
    return info["file"]


@when('the operator detaches the disk "{disk}"')
@given('the operator detached the disk "{disk}"')
def step_detach(context, disk):
    info = _disks(context).get(disk, {})
    if info.get("vm"):
        _witness_vm(context, info["vm"])
    context.outcome = context.sut.detach_disk(disk)


@when('the operator deletes the disk "{disk}"')
def step_delete(context, disk):
    context.outcome = context.sut.delete_disk(disk)


@given('the disk "{disk}" of {size} is attached to "{vm}"')
def step_is_attached(context, disk, size, vm):
    step_created(context, disk, size)
    step_attach(context, disk, vm)
    assert context.outcome.done, f"expected the disk '{disk}' attached to '{vm}'; {context.outcome.describe()}"
    _device(context, disk), _file(context, disk)


@given('the disk "{disk}" of {size} was attached to "{vm}" and detached again')
def step_was_attached(context, disk, size, vm):
    step_is_attached(context, disk, size, vm)
    step_detach(context, disk)
    assert context.outcome.done, f"expected the disk '{disk}' detached; {context.outcome.describe()}"
    step_gone_from_guest(context, vm, disk)


# -- the guest ---------------------------------------------------------------------------------
@then('the guest of "{vm}" sees the disk "{disk}" as a new disk of {size}')
def step_sees_new(context, vm, disk, size):
    o = context.outcome
    assert o.done, f"expected the disk '{disk}' attached; {o.describe()}"
    device = _device(context, disk)
    seen = _devices(context, vm).get(device)
    assert seen == _bytes(size), f"expected /dev/{device} of {_bytes(size)} bytes in the guest of " \
                                 f"'{vm}', its /sys/block says {seen}"


@then('the guest of "{vm}" still sees the disk "{disk}"')
@then('the guest of "{vm}" sees the disk "{disk}"')
def step_still_sees(context, vm, disk):
    device = _device(context, disk)
    devices = _devices(context, vm)
    assert device in devices, f"expected /dev/{device} (disk '{disk}') still in the guest of '{vm}', it has " \
                              f"{sorted(devices)}; {context.outcome.describe()}"


@then('the guest of "{vm}" no longer sees the disk "{disk}"')
def step_gone_from_guest(context, vm, disk):
    assert context.outcome.done, f"expected the disk '{disk}' detached; {context.outcome.describe()}"
    device = _device(context, disk)
    gone = _wait(lambda: device not in _devices(context, vm), 30, "the device gone")
    assert gone, f"expected /dev/{device} (disk '{disk}') gone from the guest of '{vm}' after detaching, it is " \
                 f"still in its /sys/block; {context.outcome.describe()}"


@then('the guest of "{vm}" sees no new disk')
def step_no_new(context, vm):
    before = _state(context, "devices_before")[vm]
    # The host's file table shows a wrong attach at once: the VM process opened another image.
    opened = context.host.vm_open_disks(_folder(context, vm)) - _state(context, "files_before")[vm]
    assert not opened, f"expected the VM process of '{vm}' to open no new disk image, it opened " \
                       f"{sorted(map(str, opened))}; {context.outcome.describe()}"
    # A hot-plug shows up in the guest in well under a second here; give a wrong one the chance to.
    time.sleep(context.driver.accel().scale(1))
    new = set(_devices(context, vm)) - before
    assert not new, f"expected no new block device in the guest of '{vm}', found {sorted(new)}; " \
                    f"{context.outcome.describe()}"


@given('the guest of "{vm}" wrote the note "{note}" on the disk "{disk}"')
@when('the guest of "{vm}" writes the note "{note}" on the disk "{disk}"')
def step_write_note(context, vm, disk, note):
    device = _device(context, disk)
    _guest(context, vm).succeed(f"mkfs.ext4 -q -F /dev/{device} && mkdir -p {MOUNT} && mount /dev/{device} {MOUNT} "
                                f"&& echo '{note}' > {MOUNT}/note.txt && umount {MOUNT} && sync")


@then('the guest of "{vm}" reads the note "{note}" from the disk "{disk}"')
def step_read_note(context, vm, disk, note):
    assert context.outcome.done, f"expected the last action done; {context.outcome.describe()}"
    device = _device(context, disk)
    m = _guest(context, vm)
    m.wait_until_succeeds(f"test -b /dev/{device}", timeout=30)
    r = m.execute(f"mkdir -p {MOUNT} && mount -o ro /dev/{device} {MOUNT} && cat {MOUNT}/note.txt; "
                  f"s=$?; umount {MOUNT}; exit $s")
    assert r.ok and r.stdout.strip() == note, f"expected the note {note!r} on /dev/{device} (disk '{disk}') in " \
                                              f"the guest of '{vm}'; {r.describe()}"


@given('the guest of "{vm}" keeps the process "{command}" running')
def step_keeps_process(context, vm, command):
    m = _guest(context, vm)
    m.succeed(f"setsid {command} >/dev/null 2>&1 < /dev/null &")
    pid = m.wait_until_succeeds(f"pgrep -xf '{command}'", timeout=10).strip()
    _state(context, "guest_pids")[(vm, command)] = pid


@then('the process "{command}" still runs in the guest of "{vm}" as the same process')
def step_same_guest_process(context, command, vm):
    assert context.outcome.done, f"expected the last action done; {context.outcome.describe()}"
    before = context.guest_pids[(vm, command)]
    r = _guest(context, vm).execute(f"pgrep -xf '{command}'")
    assert r.ok and r.stdout.strip() == before, f"expected '{command}' still running in '{vm}' as pid {before}; " \
                                                f"pgrep: {r.describe()}"


@then('the VM "{vm}" kept running without a restart')
def step_no_restart(context, vm):
    assert context.outcome.done, f"expected the last action done; {context.outcome.describe()}"
    process, boot_id = context.vm_identity[vm]
    now = context.host.vm_process_id(_folder(context, vm))
    assert now == process, f"expected the VM '{vm}' still run by {process}, it is run by {now}"
    booted = _guest(context, vm).read_file("/proc/sys/kernel/random/boot_id").decode().strip()
    assert booted == boot_id, f"expected the guest of '{vm}' not rebooted (boot id {boot_id}), it is {booted}"


# -- the host ----------------------------------------------------------------------------------
@then('the file of the disk "{disk}" is gone')
def step_file_gone(context, disk):
    assert context.outcome.done, f"expected the disk '{disk}' deleted; {context.outcome.describe()}"
    path = _file(context, disk)
    assert not path.exists(), f"expected {path} (disk '{disk}', as its VM had it open) gone, it is still there"


@then('the file of the disk "{disk}" is still there')
def step_file_there(context, disk):
    path = _file(context, disk)
    assert path.is_file(), f"expected {path} (disk '{disk}') still there; {context.outcome.describe()}"


@then('the disk "{disk}" is no longer listed')
def step_not_listed(context, disk):
    o = context.sut.list_disks()
    assert o.done, f"expected the disks listed; {o.describe()}"
    assert disk not in [d["name"] for d in o.data], f"expected no disk '{disk}' in the list: {o.data}"


@then('it is refused because the disk "{disk}" is in use')
def step_refused_in_use(context, disk):
    o = context.outcome
    assert o.refused_for(BUSY, disk), f"expected a refusal naming the disk '{disk}' as in use; {o.describe()}"


@then('it is refused because there is no disk "{disk}"')
def step_refused_unknown(context, disk):
    o = context.outcome
    assert o.refused_for(UNKNOWN_DISK, disk), f"expected a refusal naming the unknown disk '{disk}'; {o.describe()}"


# -- drift, for the observer -------------------------------------------------------------------
@when('a disk is plugged into "{vm}" behind the records\' back')
def step_plug_behind(context, vm):
    from vmfixtures.backends.base import LAST_DATA_SLOT, DataDisk

    stray = context.project.folder / "stray-disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stray), "16M"], check=True)
    context.add_cleanup(stray.unlink, missing_ok=True)
    context.drift_at = time.time()
    # The hypervisor's own hot-plug, bypassing the product's records (what another tool would do).
    context.driver.attach_disk(vm, DataDisk("stray", stray, LAST_DATA_SLOT))


@when('the file of the disk "{disk}" is deleted on the host')
def step_delete_file(context, disk):
    context.drift_at = time.time()
    _file(context, disk).unlink()
