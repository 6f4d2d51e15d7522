"""Agents: installed and run through the product; the run's effects are checked on the host."""

import os
import shutil

from behave import given, then, when

from vmfixtures.agents import reference_wheel
from vmfixtures.sut.base import MISSING_ARTIFACT, UNKNOWN_AGENT
from vmfixtures.testkit import wait_for


def _act(context, action, *args, **kwargs):
    """Carry out ``action`` of the product, remembering the config's text first (``config_before``)."""
    context.project.config_before = context.project.config_path.read_text()
    context.outcome = getattr(context.sut, action)(*args, **kwargs)
    return context.outcome


def _command(context, name):
    """The command the config declares agent ``name`` to run (as the project wrote it)."""
    return context.project.agents[name]["run"].split()[0]


def _agent_exit(context):
    o = context.outcome
    assert o.done, f"expected the agent to run; {o.describe()}"
    return o.data["exit_code"]


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
    o = _act(context, "install_agent", name)
    assert o.done, f"expected '{name}' installed; {o.describe()}"


@when('the operator installs the agent "{name}"')
def step_install(context, name):
    _act(context, "install_agent", name)


@when("the operator installs all agents")
def step_install_all(context):
    o = _act(context, "install_all_agents")
    assert o.done, f"expected every agent installed; {o.describe()}"


@when('the operator runs the agent "{name}"')
def step_run(context, name):
    _act(context, "run_agent", name)


@when('the operator runs the agent "{name}" with backups disabled')
def step_run_no_backups(context, name):
    _act(context, "run_agent", name, backups=False)


@when('the operator runs the agent "{name}" with the task in TASK.md')
def step_run_task(context, name):
    _act(context, "run_agent", name, args=("Follow the instructions in TASK.md",))


@then('the agent "{name}" can be started in "{vm}"')
def step_can_start(context, name, vm):
    command = _command(context, name)
    r = context.driver.machine(vm).execute(f"{command} --help")
    assert r.ok, f"expected `{command} --help` to work in '{vm}'; {r.describe()}; install: {context.outcome.describe()}"


@then("the run ends with exit code {code:d}")
def step_exit_code(context, code):
    assert _agent_exit(context) == code, f"expected the agent's exit code {code}; {context.outcome.describe()}"


@then('the agent reports that it works in "{folder}"')
def step_workdir(context, folder):
    line = f"scribe: working in {folder}"
    assert line in context.outcome.stdout, f"expected {line!r} in the agent's output; {context.outcome.describe()}"


@then('the operator sees the agent say "{words}"')
def step_agent_says(context, words):
    assert words in context.outcome.stderr, f"expected the agent to say {words!r}; {context.outcome.describe()}"


def _backups(context, folder):
    return context.host.snapshots(context.project.folder / "backups" / folder)


@then('the first backup of "{folder}" holds "{present}" but not "{absent}"')
def step_first_backup(context, folder, present, absent):
    snaps = _backups(context, folder)
    assert snaps, f"expected backups of {folder}; {context.outcome.describe()}"
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
    context.agent_run = context.sut.start_agent(name)
    command = _command(context, name)
    machine, run = context.driver.machine(vm), context.agent_run

    def working():
        assert run.proc.poll() is None, \
            f"expected the agent at work; the run ended: {context.sut.agent_ended(run).describe()}"
        return machine.execute(["pgrep", "-f", command]).ok

    wait_for(working, context.driver.accel().scale(60), f"the agent {name} at work in {vm}")


@then('while the agent works, a backup of "{folder}" holds "{present}" but not "{absent}"')
def step_backup_during(context, folder, present, absent):
    wait_for(lambda: [s for s in _backups(context, folder) if (s / present).exists() and not (s / absent).exists()],
             context.driver.accel().scale(30), f"a backup of {folder} with {present} and without {absent}")
    assert context.agent_run.proc.poll() is None, "expected the agent still at work when that backup was taken"


@then("the agent's run ends with exit code {code:d}")
def step_run_ends(context, code):
    context.outcome = context.sut.agent_ended(context.agent_run, timeout=context.driver.accel().scale(60))
    assert _agent_exit(context) == code, f"expected the agent's exit code {code}; {context.outcome.describe()}"


@then('the run is refused because the config declares no agent "{name}"')
def step_refused_unknown_agent(context, name):
    o = context.outcome
    assert o.refused_for(UNKNOWN_AGENT, name), f"expected the run refused, naming the unknown agent '{name}'; " \
                                               f"{o.describe()}"


@then('the installation is refused because the artifact of "{name}" is missing')
def step_refused_missing_artifact(context, name):
    o = context.outcome
    assert o.refused_for(MISSING_ARTIFACT, name), f"expected the installation refused, the artifact of '{name}' " \
                                                  f"missing; {o.describe()}"
