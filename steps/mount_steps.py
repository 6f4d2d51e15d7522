"""Mounts: the operator mounts through the product; facts are checked in the guest and on the host."""

import os
import signal

from behave import given, then, when

from vmfixtures.sut.base import BUSY, MISSING_SOURCE, NOT_RUNNING


def _act(context, action, *args):
    """Carry out ``action`` of the product, remembering the config's text first (``config_before``)
    so that a step can tell whether a refused action left it unchanged."""
    context.project.config_before = context.project.config_path.read_text()
    context.outcome = getattr(context.sut, action)(*args)
    return context.outcome


def _ok(context):
    o = context.outcome
    assert o.done, f"expected the {o.action} to succeed; {o.describe()}"


@given('the project folder "{folder}" holds "{name}" saying "{text}"')
def step_folder(context, folder, name, text):
    context.project.write_file(f"{folder}/{name}", text)


@given('the config mounts "{source}" at "{target}" in "{vm}"')
def step_declare_mount(context, source, target, vm):
    context.project.declare_mount(source, target, vm)


@given('the operator mounted "{source}"')
def step_mounted(context, source):
    _act(context, "mount", source)
    _ok(context)


@when('the operator mounts "{source}"')
def step_mount(context, source):
    _act(context, "mount", source)


@when("the operator mounts all folders of the config")
def step_mount_all(context):
    _act(context, "mount_all")
    _ok(context)


@when('the operator unmounts "{source}"')
def step_umount(context, source):
    _act(context, "unmount", source)
    _ok(context)


@when('the operator adds a mount of "{source}" at "{target}" in "{vm}"')
def step_addmount(context, source, target, vm):
    _act(context, "add_mount", source, target, vm)


@when('the operator removes the mount "{source}"')
def step_removemount(context, source):
    _act(context, "remove_mount", source)
    _ok(context)


@when('the operator tries to remove the mount "{source}"')
def step_try_removemount(context, source):
    _act(context, "remove_mount", source)


@given('a guest process of "{vm}" is working inside "{target}"')
def step_busy(context, vm, target):
    context.driver.machine(vm).succeed(f"cd {target} && setsid sleep 600 </dev/null >/dev/null 2>&1 &")


@when('the guest of "{vm}" writes "{text}" to "{path}"')
def step_guest_writes(context, vm, text, path):
    context.driver.machine(vm).succeed(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", text, path])


@given('the host writes "{text}" to "{relative}"')
@when('the host writes "{text}" to "{relative}"')
def step_host_writes(context, text, relative):
    context.project.write_file(relative, text)


@then('the guest of "{vm}" reads "{text}" in "{path}"')
def step_guest_reads(context, vm, text, path):
    r = context.driver.machine(vm).execute(["cat", path])
    assert r.ok and r.stdout.strip() == text, (f"expected {path} in '{vm}' to say {text!r}, got exit {r.exit_code} "
                                               f"{r.stdout.strip()!r} {r.stderr.strip()!r}; last command: "
                                               f"{getattr(context, 'outcome', None) and context.outcome.describe()}")


@then('the host file "{relative}" says "{text}"')
def step_host_reads(context, relative, text):
    path = context.project.folder / relative
    assert path.is_file() and path.read_text().strip() == text, \
        f"expected {path} to say {text!r}, found {path.read_text().strip() if path.exists() else 'no file'!r}"


@then('the host file "{relative}" belongs to the host user')
def step_host_owner(context, relative):
    st = (context.project.folder / relative).stat()
    folder = (context.project.folder / relative).parent.stat()  # whose folder the guest wrote into
    assert (st.st_uid, st.st_gid) == (folder.st_uid, folder.st_gid) == (os.geteuid(), os.getegid()), \
        f"expected owner {os.geteuid()}:{os.getegid()} like its folder, found {st.st_uid}:{st.st_gid}"


@when('the guest of "{vm}" hands "{path}" to user {uid:d}')
def step_guest_chown(context, vm, path, uid):
    context.guest_result = context.driver.machine(vm).execute(["chown", f"{uid}:{uid}", path])


@then('the guest of "{vm}" has no mount at "{target}"')
def step_no_mount(context, vm, target):
    mounts = context.host.guest_mounts(context.driver.machine(vm))
    assert target not in mounts, f"expected no mount at {target} in '{vm}', the guest has it as {mounts[target]}"


@given('the host side of the mount of "{source}" hangs')
def step_helper_hangs(context, source):
    """Freeze (SIGSTOP) the host's file server of the mount: it will never exit on its own."""
    folder = (context.project.folder / source).resolve()
    servers = [p for p in context.host.processes_mentioning(folder) if "sftp-server" in " ".join(p.cmdline())]
    assert servers, f"expected a host process serving {folder}, found none"
    for proc in servers:
        proc.send_signal(signal.SIGSTOP)
        context.add_cleanup(_kill_quietly, proc)


def _kill_quietly(proc):
    try:
        proc.kill()
    except Exception:  # noqa: BLE001 - gone already: that is what the scenario wants
        pass


@then('no process serves the mount of "{source}" any more')
def step_no_helpers(context, source):
    folder = (context.project.folder / source).resolve()
    left = context.host.processes_mentioning(folder)
    assert not left, f"expected no process serving {folder}, found {[(p.pid, p.name()) for p in left]}"


def _config_mounts(context):
    """The config's mounts as (source, target, vm), read with PyYAML; sources resolved against its folder."""
    data = context.host.yaml(context.project.config_path) or {}
    return [((context.project.folder / m["source"]).resolve(), m.get("target"), m.get("vm"))
            for m in data.get("mounts") or []]


@then('the config lists a mount of "{source}" at "{target}" in "{vm}"')
def step_config_lists(context, source, target, vm):
    _ok(context)
    wanted = ((context.project.folder / source).resolve(), target, vm)
    assert wanted in _config_mounts(context), f"expected {source} -> {vm}:{target} in the config, " \
                                              f"found {_config_mounts(context)}"


@then('the config no longer lists a mount of "{source}"')
def step_config_dropped(context, source):
    folder = (context.project.folder / source).resolve()
    left = [m for m in _config_mounts(context) if m[0] == folder]
    assert not left, f"expected no mount of {source!r} in the config, it lists {left}"


@then("the config is unchanged")
def step_config_unchanged(context):
    now = context.project.config_path.read_text()
    assert now == context.project.config_before, f"expected the config untouched, it changed to:\n{now}"


@then('the removal is refused because "{target}" is in use')
def step_refused_in_use(context, target):
    o = context.outcome
    assert o.refused_for(BUSY, target), f"expected the removal refused, {target} being in use; {o.describe()}"


@then("adding the mount is refused because the folder does not exist")
def step_refused_missing(context):
    o = context.outcome
    assert o.refused_for(MISSING_SOURCE), f"expected the mount refused for a missing folder; {o.describe()}"


@then('adding the mount is refused because another mount already uses "{target}"')
def step_refused_taken(context, target):
    o = context.outcome
    assert o.refused_for(BUSY, target), f"expected the mount refused, {target} being taken; {o.describe()}"


@then('mounting is refused because "{vm}" is not running')
def step_refused_not_running(context, vm):
    o = context.outcome
    assert o.refused_for(NOT_RUNNING, vm), f"expected the mount refused, '{vm}' not running; {o.describe()}"
