"""VM disk backups: taken and restored through the product; checked through the host: sizes of what
each backup added on disk, checkpoints as the hypervisor lists them, restored disks booted and read."""

import os
import shutil
import stat
import subprocess
from datetime import datetime
from pathlib import Path

from behave import given, then, when

from vmfixtures.errors import Unsupported
from vmfixtures.spec import load_config
from vmfixtures.sut.base import (
    BROKEN_CHAIN,
    MISSING_TOOL,
    NO_SPACE,
    NOT_RUNNING,
    UNKNOWN_VM,
)


def _dest(context):
    return getattr(context, "disk_dest", None) or context.project.folder / "disk-backups"


def _act(context, action, *args, **kwargs):
    """An operator action through the product; one the product has no way to do skips the scenario
    with that reason (and the steps after it)."""
    try:
        return getattr(context.sut, action)(*args, **kwargs)
    except Unsupported as exc:
        context.scenario.skip(reason=str(exc))
        return None


def _files(context) -> dict:
    """Every regular file in the destination with inode, size, mtime and mode (the host's view)."""
    return {k: v for k, v in context.host.tree(_dest(context)).items() if stat.S_ISREG(v.mode)}


def _chains(context):
    """The backup chains, oldest first, as the product lists them."""
    o = _act(context, "disk_backups", _dest(context))
    if o is None:
        return None
    assert o.done, f"expected the backup status; {o.describe()}"
    return o.data


def _chain(context):
    found = _chains(context)
    assert found, "expected a backup chain in the destination"
    return found[-1]


def _backup(context, name, **how):
    """One backup; what it added to the destination, measured on disk, is remembered per VM."""
    before = _files(context)
    o = _act(context, "disk_backup", name, _dest(context), **how)
    if o is None:
        return False
    assert o.done, f"expected a disk backup of '{name}'; {o.describe()}"
    after = _files(context)
    added = sum(context.host.allocated(_dest(context) / p) for p in after if p not in before)
    context.__dict__.setdefault("backup_sizes", {}).setdefault(name, []).append(added)
    return True


def _checkpoints(context, name):
    return context.host.checkpoints(context.driver.vm_dir(name))


@given('the operator took a backup of "{name}"')
@when('the operator takes a backup of "{name}"')
def step_backup(context, name):
    _backup(context, name)


@given('the operator took {n:d} backups of "{name}"')
def step_backups(context, n, name):
    for _ in range(n):
        if not _backup(context, name):
            return


def _write(context, name, mb):
    context.driver.machine(name).succeed(
        f"dd if=/dev/urandom of=/root/new-{mb}.bin bs=1M count={mb} status=none && sync", timeout=600)


@when('the guest of "{name}" writes 1 MB of new data')
def step_write_mb(context, name):
    _write(context, name, 1)


@given('the guest of "{name}" has written {mb:d} MB of new data')
def step_written(context, name, mb):
    _write(context, name, mb)


@then('the second backup of "{name}" is incremental')
def step_incremental(context, name):
    kinds = [link["kind"] for link in _chain(context)["links"]]
    assert kinds == ["full", "incremental"], f"expected a full then an incremental backup, found {kinds}"


@then('the incremental backup of "{name}" is less than half the size of the full one')
def step_sizes(context, name):
    """Sizes as the file system counts them (allocated blocks) of the files each backup added."""
    sizes = context.backup_sizes[name]
    assert len(sizes) == 2, f"expected two backups of '{name}', measured {sizes}"
    full, inc = sizes
    assert 0 < inc < full / 2, f"expected the incremental ({inc} B added on disk) under half the full ({full} B)"


@then('the hypervisor keeps {n:d} backup checkpoint for "{name}"')
@then('the hypervisor keeps {n:d} backup checkpoints for "{name}"')
def step_checkpoint_count(context, n, name):
    found = _checkpoints(context, name)
    assert len(found) == n, f"expected {n} checkpoint(s) of '{name}' listed by its hypervisor, found {found}"


@given('the full backup of "{name}" has gone missing')
def step_missing_link(context, name):
    Path(_chain(context)["links"][0]["file"]).unlink()


@when('the operator restores the backups of "{name}" as the VM "{new}"')
def step_restore(context, name, new):
    o = _act(context, "restore_disk_backup", _chain(context)["chain"], new)
    if o is None:
        return
    context.outcome = o
    if o.done and isinstance(o.data, dict) and o.data.get("disk"):  # the product restored a disk: boot it
        spec = load_config(context.project.config_path).vm(new)
        context.fixtures.boot_from_disk(spec, Path(o.data["disk"]), context.lease)
    if o.done:
        context.pids[new] = context.host.vm_pid(context.driver.vm_dir(new))


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
        if not _backup(context, name, full=True):
            return
    context.chains_before = [c["chain"] for c in sorted(_chains(context), key=lambda c: c["links"][0]["at"])]


@when("the operator keeps only the newest backup chain")
def step_prune(context):
    context.outcome = _act(context, "prune_disk_backups", _dest(context), keep=1)
    if context.outcome is not None:
        assert context.outcome.done, f"expected the prune to work; {context.outcome.describe()}"


@then("only the newest of the {n:d} backup chains remains")
def step_newest_remains(context, n):
    before, after = context.chains_before, [c["chain"] for c in _chains(context)]
    newest = before[-1]  # oldest first
    assert len(before) == n and after == [newest], f"expected only the newest of {before} left, found {after}"
    assert all(not Path(c).exists() for c in before if c != newest), "expected the older chains deleted whole"


@when('the operator scrubs the backup checkpoints of "{name}"')
def step_scrub(context, name):
    o = _act(context, "scrub_backup_bitmap", name)
    if o is None:
        return
    assert o.done and o.note is None, f"expected the checkpoints deleted; {o.describe()}"
    left = _checkpoints(context, name)
    assert not left, f"expected no checkpoint of '{name}' left after the scrub, its hypervisor lists {left}"


@when('the operator scrubs the oldest backup checkpoint of "{name}" by its name')
def step_scrub_one(context, name):
    context.checkpoints_before = _checkpoints(context, name)
    assert context.checkpoints_before, f"expected checkpoints of '{name}' to scrub, its hypervisor lists none"
    oldest = context.checkpoints_before[0]  # names as the hypervisor lists them, sorted
    context.scrubbed = oldest
    o = _act(context, "scrub_backup_bitmap", name, checkpoint=oldest)
    if o is not None:
        assert o.done, f"expected checkpoint {oldest} of '{name}' scrubbed; {o.describe()}"


@then('the hypervisor keeps the other {n:d} backup checkpoints of "{name}"')
def step_others_kept(context, n, name):
    left = _checkpoints(context, name)
    expected = [c for c in context.checkpoints_before if c != context.scrubbed]
    assert len(expected) == n and left == expected, \
        f"expected {expected} kept and {context.scrubbed} gone, the hypervisor lists {left}"


@then("the newest backup starts a new chain with a full link")
def step_new_full_chain(context):
    found = _chains(context)
    kinds = [[l["kind"] for l in c["links"]] for c in found]
    assert kinds == [["full"], ["full"]], f"expected two chains of one full backup each, found {kinds}"


@when("the operator asks for the status of the backups, for people and for machines")
def step_status(context):
    context.status_text = _act(context, "disk_backup_status", _dest(context), human=True)
    if context.status_text is not None:
        context.status_json = _act(context, "disk_backup_status", _dest(context))


@then('both name every backup chain and every checkpoint the hypervisor keeps for "{name}"')
def step_status_agrees(context, name):
    text, data = context.status_text, context.status_json
    assert text.done and data.done, f"expected both status reports; {text.describe()}\n{data.describe()}"
    checkpoints = _checkpoints(context, name)
    assert checkpoints, f"expected the hypervisor to keep checkpoints of '{name}'"
    on_disk = sorted({p.split("/")[1] for p in _files(context) if p.count("/") >= 2 and p.startswith(name + "/")})
    chains = sorted(Path(c["chain"]).name for c in data.data["chains"])
    assert chains == on_disk, f"expected the machine status to list the chain folders {on_disk}, it lists {chains}"
    listed = data.data["vms"].get(name, {}).get("checkpoints")
    assert listed == checkpoints, f"expected the machine status to list {checkpoints} for '{name}', it lists {listed}"
    missing = [w for w in [*on_disk, *checkpoints] if w not in text.stdout]
    assert not missing, f"expected the status for people to name {missing}; {text.describe()}"


@given("the host lacks the tools the disk backups need")
def step_hide_tools(context):
    tools = context.sut.disk_backup_tools
    if not tools:
        context.scenario.skip(reason=f"{context.sut.name} needs no host tool besides itself for a disk backup")
        return
    folder = context.project.folder / "bin-without-tools"
    folder.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        for exe in Path(d).glob("*") if Path(d).is_dir() else []:
            if exe.name not in tools and not (folder / exe.name).exists() and os.access(exe, os.X_OK):
                (folder / exe.name).symlink_to(exe)
    still = [t for t in tools if shutil.which(t, path=str(folder))]
    assert not still, f"expected the search path {folder} without {still}, it still finds them"
    context.sut.search_path = str(folder)


@when('the operator takes a backup of every VM matching "{pattern}"')
def step_backup_pattern(context, pattern):
    context.files_before = _files(context)
    context.outcome = _act(context, "disk_backup", pattern, _dest(context))
    if context.outcome is not None:
        assert context.outcome.done, f"expected backups of the VMs matching {pattern}; {context.outcome.describe()}"


@then('"{a}" and "{b}" each have a full backup of their own')
def step_each_full(context, a, b):
    found = _chains(context)
    for vm in (a, b):
        kinds = [[l["kind"] for l in c["links"]] for c in found if c["vm"] == vm]
        assert kinds == [["full"]], f"expected one chain with a full backup of '{vm}', found {kinds} in {found}"


@then('"{name}" has no backup')
def step_no_backup(context, name):
    found = [c for c in (_chains(context) or []) if c["vm"] == name]
    assert not found, f"expected no backup of '{name}', found {found}"
    o = getattr(context, "outcome", None)
    if o is not None and not o.done and getattr(context, "files_before", None) is not None:
        # a refused attempt: by the file system, nothing new
        added = sorted(set(_files(context)) - set(context.files_before))
        assert not added, f"expected nothing written to the destination by the refused backup, found {added}"
    assert not _checkpoints(context, name), f"expected no checkpoint of '{name}', found {_checkpoints(context, name)}"


@given('the VM "{name}" has been stopped')
def step_stopped(context, name):
    context.fixtures.stop(name)


@given('the disk backups go to a destination with room for {mb:d} MB')
def step_small_dest(context, mb):
    dest = context.project.folder / "small-destination"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0755", "vmfx-small-dest", str(dest)],
                   check=True, capture_output=True)
    context.add_cleanup(lambda: subprocess.run(["umount", str(dest)], check=True, capture_output=True))
    context.disk_dest = dest


@when('the operator tries to back up "{name}"')
def step_try_backup(context, name):
    context.files_before = _files(context)
    context.outcome = _act(context, "disk_backup", name, _dest(context))


@then("the backups already taken are unchanged and nothing was added")
def step_unchanged(context):
    after = _files(context)
    added = sorted(set(after) - set(context.files_before))
    changed = sorted(p for p in context.files_before if after.get(p) != context.files_before[p])
    assert not added and not changed, f"expected the destination's files as they were; added {added}, " \
                                      f"changed or removed {changed}; {context.outcome.describe()}"


def _refused(context, kind, what, subject=None):
    o = context.outcome
    assert o.refused_for(kind, subject) and o.exit_code != 0, f"expected {what}, with a non-zero exit; {o.describe()}"


@then("the restore is refused because the backup chain has a missing link")
def step_refused_missing_link(context):
    _refused(context, BROKEN_CHAIN, "the restore refused for a missing link")


@then('the disk backup is refused because no VM named "{name}" exists')
@then('the disk backup is refused because no VM matches "{name}"')
def step_refused_unknown(context, name):
    _refused(context, UNKNOWN_VM, f"the backup refused naming '{name}'", name)


@then('the disk backup is refused because "{name}" is not running')
def step_refused_not_running(context, name):
    _refused(context, NOT_RUNNING, f"the backup refused, '{name}' not running", name)


@then("the disk backup is refused because a tool is missing")
def step_refused_tool(context):
    _refused(context, MISSING_TOOL, "the backup refused for a missing tool")


@then("the disk backup is refused because the destination is full")
def step_refused_full(context):
    _refused(context, NO_SPACE, "the backup refused for want of space")


@given("nothing else")
def step_nothing_else(context):
    pass
