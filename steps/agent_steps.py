"""Agents: installed and run through the CLI; the run's effects are checked on the host."""

import os
import shutil

from behave import given, then, when

from vmfixtures.agents import reference_wheel
from vmfixtures.backups.folders import snapshots
from vmfixtures.spec import load_config
from vmfixtures.testkit import wait_for


def _run(context, *argv):
    context.result = context.project.operator_on_config(*argv)
    return context.result


@given('the config declares the reference agent "{name}"')
def step_reference_agent(context, name):
    wheel = reference_wheel()
    dist = context.project.folder / "dist"
    dist.mkdir(exist_ok=True)
    shutil.copy2(wheel, dist / wheel.name)
    context.project.declare_agent(name, "wheel", f"dist/{wheel.name}", "scribe --task TASK.md",
                                  {"SCRIBE_MODE": "careful"})


@given('the config declares the script agent "{name}" that prints "{text}"')
def step_script_agent(context, name, text):
    context.project.write_file(f"dist/{name}.sh", f"#!/bin/sh\necho '{text}'")
    context.project.declare_agent(name, "script", f"dist/{name}.sh", name)


@given('the config declares the wheel agent "{name}" from "{artifact}"')
def step_wheel_agent(context, name, artifact):
    context.project.declare_agent(name, "wheel", artifact, name)


@given('the config declares the npm agent "{name}" from the tarball in VMFIXTURES_CLAUDE_TARBALL')
def step_npm_agent(context, name):
    tarball = os.environ["VMFIXTURES_CLAUDE_TARBALL"]
    context.project.declare_agent(name, "npm", tarball, "claude --print", {"ANTHROPIC_API_KEY":
                                                                           os.environ["ANTHROPIC_API_KEY"]})


@given('the agent "{name}" is installed')
def step_installed(context, name):
    r = _run(context, "install-agents", name)
    assert r.exit_code == 0, f"expected '{name}' installed; {r.describe()}"


@when('the operator installs the agent "{name}"')
def step_install(context, name):
    _run(context, "install-agents", name)


@when("the operator installs all agents")
def step_install_all(context):
    r = _run(context, "install-agents", "--all-agents")
    assert r.exit_code == 0, f"expected every agent installed; {r.describe()}"


@when('the operator runs the agent "{name}"')
def step_run(context, name):
    _run(context, "run", name)


@when('the operator runs the agent "{name}" with backups disabled')
def step_run_no_backups(context, name):
    _run(context, "run", name, "--disable-backups")


@when('the operator runs the agent "{name}" with the task in TASK.md')
def step_run_task(context, name):
    _run(context, "run", name, "--", "Follow the instructions in TASK.md")


@then('the agent "{name}" can be started in "{vm}"')
def step_can_start(context, name, vm):
    command = load_config(context.project.config_path).agent(name).run.split()[0]
    r = context.driver.machine(vm).execute(f"{command} --help")
    assert r.ok, f"expected `{command} --help` to work in '{vm}'; {r.describe()}; install: {context.result.describe()}"


@then("the run ends with exit code {code:d}")
def step_exit_code(context, code):
    assert context.result.exit_code == code, f"expected the agent's exit code {code}; {context.result.describe()}"


@then('the agent reports that it works in "{folder}"')
def step_workdir(context, folder):
    line = f"scribe: working in {folder}"
    assert line in context.result.stdout, f"expected {line!r} in the agent's output; {context.result.describe()}"


@then('the operator sees the agent say "{words}"')
def step_agent_says(context, words):
    assert words in context.result.stderr, f"expected the agent to say {words!r}; {context.result.describe()}"


def _backups(context, folder):
    return snapshots(context.project.folder / "backups" / folder)


@then('the first backup of "{folder}" holds "{present}" but not "{absent}"')
def step_first_backup(context, folder, present, absent):
    snaps = _backups(context, folder)
    assert snaps, f"expected backups of {folder}; {context.result.describe()}"
    first = snaps[0]
    assert (first / present).is_file() and not (first / absent).exists(), \
        f"expected {first.name} to hold {present} and not {absent}, it holds {sorted(p.name for p in first.iterdir())}"


@then('the last backup of "{folder}" holds "{present}"')
def step_last_backup(context, folder, present):
    last = _backups(context, folder)[-1]
    assert (last / present).is_file(), f"expected {last.name} to hold {present}: {sorted(p.name for p in last.iterdir())}"


@then('there is no backup of "{folder}"')
def step_no_backup(context, folder):
    snaps = _backups(context, folder)
    assert not snaps, f"expected no backup of {folder}, found {[s.name for s in snaps]}"


@given('the mount "{source}" is backed up every second')
def step_backup_every_second(context, source):
    entry = next(m for m in context.project.mounts if m["source"] == source)
    entry["interval"] = 1
    context.project.save()


@given('the task in "{folder}" is:')
def step_task(context, folder):
    context.project.write_file(f"{folder}/TASK.md", context.text)


@given('the agent "{name}" is at work in "{vm}"')
@when('the agent "{name}" is at work in "{vm}"')
def step_at_work(context, name, vm):
    context.agent_run = context.project.start("run", name, "-c", str(context.project.config_path))
    command = load_config(context.project.config_path).agent(name).run.split()[0]
    machine, run = context.driver.machine(vm), context.agent_run

    def working():
        assert run.proc.poll() is None, f"expected the agent at work; the run ended: {run.finish().describe()}"
        return machine.execute(["pgrep", "-f", command]).ok

    wait_for(working, context.driver.accel().scale(60), f"the agent {name} at work in {vm}")


@then('while the agent works, a backup of "{folder}" holds "{present}" but not "{absent}"')
def step_backup_during(context, folder, present, absent):
    wait_for(lambda: [s for s in _backups(context, folder) if (s / present).exists() and not (s / absent).exists()],
             context.driver.accel().scale(30), f"a backup of {folder} with {present} and without {absent}")
    assert context.agent_run.proc.poll() is None, "expected the agent still at work when that backup was taken"


@then("the agent's run ends with exit code {code:d}")
def step_run_ends(context, code):
    context.result = context.agent_run.finish(timeout=context.driver.accel().scale(60))
    assert context.result.exit_code == code, f"expected the agent's exit code {code}; {context.result.describe()}"
