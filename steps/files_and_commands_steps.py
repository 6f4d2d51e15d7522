"""Files in and out of a VM, and commands run in it: the operator acts through the product; content,
modes, owners and memory are judged on the host (hashlib, stat, the kernel's VmHWM) and in the guest
(its own sha256sum, stat and find, through the harness's guest channel)."""

import os
import shutil

from behave import given, register_type, then, when
from parse import with_pattern

from vmfixtures.sut.base import MISSING_PATH, UNKNOWN_USER, UNSUPPORTED


@with_pattern(r'[^"]*')
def _quoted(text):
    return text


register_type(Q=_quoted)  # a quoted value never swallows the quote that ends it
SIZES = {"KiB": 1024, "MiB": 1024**2}


def _size(text):
    number, unit = text.split()
    return int(number) * SIZES[unit]


def _machine(context, vm):
    return context.driver.machine(vm)  # the harness's own channel to the guest, not the product's cp


# -- givens -------------------------------------------------------------------------------
@given('the project folder holds a {size} file "{path:Q}" with mode {mode}')
def step_host_file(context, size, path, mode):
    target = context.project.folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    remaining = _size(size)
    with open(target, "wb") as f:
        while remaining:
            block = os.urandom(min(remaining, 1024**2))
            f.write(block)
            remaining -= len(block)
    os.chmod(target, int(mode, 8))


@given('the guest of "{vm:Q}" holds a {size} file "{path:Q}" with mode {mode}')
def step_guest_file(context, vm, size, path, mode):
    count = _size(size) // 1024
    _machine(context, vm).succeed(["sh", "-c", f'head -c {count}K /dev/urandom > "$1" && chmod {mode} "$1"',
                                   "sh", path])


@given('the guest of "{vm:Q}" has a folder "{path:Q}"')
def step_guest_folder(context, vm, path):
    _machine(context, vm).succeed(["mkdir", "-p", path])


@given('the config gives "{vm:Q}" the guest user "{user:Q}"')
def step_config_user(context, vm, user):
    context.project.declare_vm(vm, **{**context.project.vms[vm], "user": user})


@given('the config gives "{vm:Q}" the architecture "{arch:Q}"')
def step_config_arch(context, vm, arch):
    context.project.declare_vm(vm, **{**context.project.vms[vm], "arch": arch})


@given('this machine has no emulator for "{arch:Q}"')
def step_no_emulator(context, arch):
    emulator = shutil.which(f"qemu-system-{arch}")
    if emulator:
        context.scenario.skip(reason=f"this machine has {emulator}: the refusal of an architecture it cannot "
                                     "emulate cannot be shown here")


# -- copies ------------------------------------------------------------------------------
@when('the operator copies "{src:Q}" into "{vm:Q}" as "{dst:Q}"')
def step_copy_into(context, src, vm, dst):
    context.outcome = context.sut.copy_into(vm, context.project.folder / src, dst)


@when('the operator copies "{src:Q}" out of "{vm:Q}" to "{dst:Q}"')
def step_copy_out(context, src, vm, dst):
    context.outcome = context.sut.copy_out(vm, src, context.project.folder / dst)


def _watched(context, copy, what):
    peak = context.host.peak_memory(copy.proc)  # the kernel's high-water mark of the product's process
    o = context.sut.copy_ended(copy)
    assert o.done, f"expected {what} to be copied; {o.describe()}"
    context.peaks = [*getattr(context, "peaks", []), (what, peak)]


@when('the operator copies "{src:Q}" into "{vm:Q}" as "{dst:Q}", its memory watched')
def step_copy_into_watched(context, src, vm, dst):
    _watched(context, context.sut.start_copy_into(vm, context.project.folder / src, dst), src)


@when('the operator copies "{src:Q}" out of "{vm:Q}" to "{dst:Q}", its memory watched')
def step_copy_out_watched(context, src, vm, dst):
    _watched(context, context.sut.start_copy_out(vm, src, context.project.folder / dst), f"{vm}:{src}")


@then('the guest of "{vm:Q}" holds "{path:Q}" with the content of "{src:Q}" and mode {mode}')
def step_guest_has_copy(context, vm, path, src, mode):
    o = getattr(context, "outcome", None)
    said = o.describe() if o else "(copied with its memory watched)"
    m = _machine(context, vm)
    facts = context.host.guest_stat(m, path)
    assert facts is not None, f"expected {path} in the guest of {vm}, there is none; {said}"
    want, got = context.host.sha256(context.project.folder / src), context.host.guest_sha256(m, path)
    assert got == want, f"expected {path} in {vm} to have the SHA-256 of {src} ({want}), it has {got}; {said}"
    assert facts["mode"] == int(mode, 8), f"expected {path} in {vm} with mode {mode}, it has {facts['mode']:o}"


@then('the project folder holds "{path:Q}" with the content of "{src:Q}" in "{vm:Q}" and mode {mode}')
def step_host_has_copy(context, path, src, vm, mode):
    o = getattr(context, "outcome", None)
    said = o.describe() if o else "(copied with its memory watched)"
    target = context.project.folder / path
    assert target.is_file(), f"expected {target} on the host, there is none; {said}"
    want, got = context.host.guest_sha256(_machine(context, vm), src), context.host.sha256(target)
    assert got == want, f"expected {target} to have the SHA-256 of {vm}:{src} ({want}), it has {got}; {said}"
    assert context.host.mode(target) == int(mode, 8), \
        f"expected {target} with mode {mode}, it has {context.host.mode(target):o}"


@then("no copy of the large file took more than {limit:d} MiB of memory beyond the small copy")
def step_memory_bounded(context, limit):
    (small, baseline), *large = context.peaks
    over = [(what, peak) for what, peak in large if peak > baseline + limit * 1024**2]
    shown = ", ".join(f"{what}: {peak / 1024**2:.1f} MiB" for what, peak in context.peaks)
    assert large and not over, f"expected each copy within {limit} MiB of the {small} copy's peak; peaks: {shown}"


@then('the copy is refused because the guest folder "{path:Q}" does not exist')
@then('the command is refused because the guest folder "{path:Q}" does not exist')
def step_refused_guest_folder(context, path):
    o = context.outcome
    assert o.refused_for(MISSING_PATH, path), f"expected a refusal naming the missing guest folder {path}; {o.describe()}"


@then('the copy is refused because the project folder "{path:Q}" does not exist')
def step_refused_host_folder(context, path):
    o = context.outcome
    folder = str(context.project.folder / path)
    assert o.refused_for(MISSING_PATH, folder), f"expected a refusal naming the missing folder {folder}; {o.describe()}"


@then('the guest of "{vm:Q}" has no file named like "{name:Q}" under "{folder:Q}"')
def step_guest_nothing_written(context, vm, name, folder):
    found = context.host.guest_find(_machine(context, vm), folder, f"*{name}*")
    assert not found, f"expected nothing named like {name} under {folder} in {vm}, found {found}"


@then('the project folder has no file named like "{name:Q}"')
def step_host_nothing_written(context, name):
    found = [str(p) for p in context.project.folder.rglob(f"*{name}*")]
    assert not found, f"expected nothing named like {name} in the project folder, found {found}"


# -- commands ----------------------------------------------------------------------------
def _run(context, vm, cwd=None, env=None, user=None):
    context.outcome = context.sut.run_command(vm, ["sh", "-c", context.text], cwd=cwd, env=env, user=user)


@when('the operator runs in "{vm:Q}":')
def step_run(context, vm):
    _run(context, vm)


@when('the operator runs in "{vm:Q}", in the folder "{cwd:Q}":')
def step_run_in(context, vm, cwd):
    _run(context, vm, cwd=cwd)


@when('the operator runs in "{vm:Q}", in the folder "{cwd:Q}" and with {var} set to "{value:Q}":')
def step_run_in_with(context, vm, cwd, var, value):
    _run(context, vm, cwd=cwd, env={var: value})


@when('the operator runs in "{vm:Q}", as the guest user "{user:Q}":')
def step_run_as(context, vm, user):
    _run(context, vm, user=user)


@then('the guest of "{vm:Q}" holds "{path:Q}" saying "{text:Q}"')
def step_guest_says(context, vm, path, text):
    o = context.outcome
    assert o.done and o.data["exit_code"] == 0, f"expected the command to run and succeed; {o.describe()}"
    got = _machine(context, vm).read_file(path).decode().strip()
    assert got == text, f"expected {path} in {vm} to say {text!r}, it says {got!r}"


@then('the guest of "{vm:Q}" holds "{path:Q}" saying "{text:Q}", owned by "{owner:Q}"')
def step_guest_says_owned(context, vm, path, text, owner):
    step_guest_says(context, vm, path, text)
    facts = context.host.guest_stat(_machine(context, vm), path)
    assert facts["owner"] == owner, f"expected {path} in {vm} owned by {owner}, it is owned by {facts['owner']}"


@then('the command is reported failed with exit code {code:d} and the error output "{text:Q}"')
def step_command_failed(context, code, text):
    o = context.outcome
    assert o.done and o.data["exit_code"] == code and text in o.stderr, \
        f"expected the command to run and fail with exit code {code} and {text!r} on its error output; {o.describe()}"


@then('the command is refused because the guest has no user "{user:Q}"')
def step_command_no_user(context, user):
    o = context.outcome
    assert o.refused_for(UNKNOWN_USER, user), f"expected a refusal naming the unknown user {user}; {o.describe()}"


@then('the guest of "{vm:Q}" has no "{path:Q}"')
def step_guest_lacks(context, vm, path):
    facts = context.host.guest_stat(_machine(context, vm), path)
    assert facts is None, f"expected no {path} in {vm} (the command must not have run), found {facts}"


# -- architecture --------------------------------------------------------------------------
@then('the creation is refused for the architecture "{arch:Q}", naming the missing "{tool:Q}"')
def step_arch_refused(context, arch, tool):
    o = context.outcome
    assert o.refused_for(UNSUPPORTED, arch) and tool in (o.data or {}).get("missing", []), \
        f"expected a refusal of the architecture {arch} naming the missing {tool}; {o.describe()}"


@then('nothing was created for the VM "{vm:Q}"')
def step_nothing_created(context, vm):
    folder = context.driver.vm_dir(vm)
    assert not folder.exists(), f"expected no folder for {vm}, found {folder} holding {[p.name for p in folder.rglob('*')]}"
    procs = [p.pid for p in context.host.vm_processes(folder.parent) if vm in " ".join(p.cmdline())]
    assert not procs, f"expected no VM process for {vm}, found pids {procs}"
