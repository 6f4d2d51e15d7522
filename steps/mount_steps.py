"""Mounts: the operator mounts through the CLI; facts are checked in the guest and on the host."""

import os

from behave import given, then, when

from vmfixtures.mounts import Mounts, helper_processes
from vmfixtures.spec import load_config


def _run(context, *argv):
    context.result = context.project.operator_on_config(*argv)
    return context.result


def _ok(context):
    r = context.result
    assert r.exit_code == 0, f"expected the command to succeed; {r.describe()}"


@given('the project folder "{folder}" holds "{name}" saying "{text}"')
def step_folder(context, folder, name, text):
    context.project.write_file(f"{folder}/{name}", text)


@given('the config mounts "{source}" at "{target}" in "{vm}"')
def step_declare_mount(context, source, target, vm):
    context.project.declare_mount(source, target, vm)


@given('the operator mounted "{source}"')
def step_mounted(context, source):
    _run(context, "mount", source)
    _ok(context)


@when('the operator mounts "{source}"')
def step_mount(context, source):
    _run(context, "mount", source)


@when("the operator mounts all folders of the config")
def step_mount_all(context):
    _run(context, "mount", "--all")
    _ok(context)


@when('the operator unmounts "{source}"')
def step_umount(context, source):
    _run(context, "umount", source)
    _ok(context)


@when('the operator adds a mount of "{source}" at "{target}" in "{vm}"')
def step_addmount(context, source, target, vm):
    _run(context, "addmount", source, target, "--vm", vm)


@when('the operator removes the mount "{source}"')
def step_removemount(context, source):
    _run(context, "removemount", source)
    _ok(context)


@when('the operator tries to remove the mount "{source}"')
def step_try_removemount(context, source):
    _run(context, "removemount", source)


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
                                               f"{getattr(context, 'result', None) and context.result.describe()}")


@then('the host file "{relative}" says "{text}"')
def step_host_reads(context, relative, text):
    path = context.project.folder / relative
    assert path.is_file() and path.read_text().strip() == text, \
        f"expected {path} to say {text!r}, found {path.read_text().strip() if path.exists() else 'no file'!r}"


@then('the host file "{relative}" belongs to the host user')
def step_host_owner(context, relative):
    st = (context.project.folder / relative).stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), \
        f"expected owner {os.getuid()}:{os.getgid()}, found {st.st_uid}:{st.st_gid}"


@then('the guest of "{vm}" has no mount at "{target}"')
def step_no_mount(context, vm, target):
    mounts = Mounts(context.driver, vm).guest_mounts()
    assert target not in mounts, f"expected no mount at {target} in '{vm}', the guest has it as {mounts[target]}"


@then('no mount helper process remains for "{vm}"')
def step_no_helpers(context, vm):
    left = [p.pid for p in helper_processes(context.driver.vm_dir(vm))]
    assert not left, f"expected no sshfs/sftp helper process for '{vm}', found pids {left}"


@then('the config lists a mount of "{source}" at "{target}" in "{vm}"')
def step_config_lists(context, source, target, vm):
    _ok(context)
    m = load_config(context.project.config_path).mount(source)
    assert (m.target, m.vm) == (target, vm), f"expected {source} -> {vm}:{target} in the config, found {m}"


@then('the config no longer lists a mount of "{source}"')
def step_config_dropped(context, source):
    given = [m.given for m in load_config(context.project.config_path).mounts]
    assert source not in given, f"expected no mount of {source!r} in the config, it lists {given}"


@then("the config is unchanged")
def step_config_unchanged(context):
    now = context.project.config_path.read_text()
    assert now == context.project.config_before, f"expected the config untouched, it changed to:\n{now}"
