"""Connectivity: ssh, shell and status, as the operator uses them."""

import os

from behave import then, when


@when('the operator runs "{command}" in "{name}" over SSH')
def step_ssh(context, command, name):
    context.outcome = context.sut.ssh(name, command)


@then('the operator sees "{text}"')
def step_sees(context, text):
    o = context.outcome
    assert o.done and text in o.stdout, f"expected {text!r} in the output; {o.describe()}"


@then("the installation's SSH key can be read by its owner only")
def step_key_private(context):
    key = context.sut.installation_key()  # where the product keeps it; judged below by stat, not by the product
    st = key.stat()
    assert st.st_uid == os.geteuid() and context.host.mode(key) == 0o600, \
        f"expected {key} owned by uid {os.geteuid()} with mode 0600, it is uid {st.st_uid} mode {oct(st.st_mode)}"
    public = key.with_name(key.name + ".pub").read_text().split()[1]
    name = next(iter(context.project.vms))
    authorized = context.driver.machine(name).read_file("/root/.ssh/authorized_keys").decode()
    assert public in authorized, f"expected the guest to authorize the key {key} (its public half), " \
                                 f"it authorizes: {authorized.strip()[:300]!r}"


@when('the operator types "{line}" into a shell on "{name}"')
def step_shell(context, line, name):
    context.outcome = context.sut.shell(name, line)
    assert context.outcome.done, f"expected the shell to end cleanly; {context.outcome.describe()}"


@then('the guest of "{name}" still has "{path}" saying "{text}"')
def step_guest_file(context, name, path, text):
    got = context.driver.machine(name).read_file(path).decode().strip()
    assert got == text, f"expected {path} in '{name}' to say {text!r}, it says {got!r}"


@when("the operator asks for the status")
def step_status(context):
    o = context.sut.status()
    assert o.done, f"expected the status; {o.describe()}"
    context.status = o.data


@then('the status shows "{name}" running with {cpus:d} cpu and {memory} of memory')
def step_status_vm(context, name, cpus, memory):
    row = context.status[name]
    seen = (row["state"], row["cpus"], row["memory"])
    assert seen == ("running", cpus, memory), f"expected {name} running, {cpus} cpu, {memory}; status: {row}"
    guest = context.host.guest_resources(context.driver.machine(name))  # what the guest kernel has
    mib = int(memory.rstrip("M")) if memory.endswith("M") else int(memory.rstrip("G")) * 1024
    assert guest["cpus"] == cpus and 0.75 * mib * 1024 <= guest["memory_kib"] <= mib * 1024, \
        f"expected the guest of {name} to have {cpus} cpu and about {memory}, it has {guest}"


@then('the status shows "{source}" mounted at "{target}" with its last backup')
def step_status_mount(context, source, target):
    last = context.host.snapshots(context.project.folder / "backups" / source)[-1].name
    mounts = [(vm, m) for vm, row in context.status.items() for m in row["mounts"] if m["source"] == source]
    assert [m for _, m in mounts] == [{"source": source, "target": target, "mounted": True, "last_backup": last}], \
        f"expected {source} mounted at {target} with last backup {last}; status: {[m for _, m in mounts]}"
    seen = context.host.guest_mounts(context.driver.machine(mounts[0][0]))  # the guest's own /proc/mounts
    assert target in seen, f"the status says {target} is mounted; the guest of {mounts[0][0]} mounts {sorted(seen)}"


@then('the status shows the agent "{name}" at work')
def step_status_agent(context, name):
    agents = [(vm, a) for vm, row in context.status.items() for a in row["agents"] if a["name"] == name]
    assert agents and agents[0][1]["pids"], f"expected the agent {name} running in the status: {agents}"
    vm, agent = agents[0]
    pids = " ".join(str(int(p)) for p in agent["pids"])  # the guest's process table must have them
    r = context.driver.machine(vm).execute(["sh", "-c", f"for p in {pids}; do test -d /proc/$p || echo $p; done"])
    assert r.ok and not r.stdout.strip(), f"the status names agent pids {agent['pids']} in {vm}; not running " \
                                          f"there: {r.stdout.split() or r.stderr.strip()}"
