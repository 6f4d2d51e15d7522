"""Getting started: the example config, the config check and the version, through the CLI."""

import platform
import shutil
import subprocess
from importlib import metadata

from behave import given, then, when

from vmfixtures.spec import load_config


@given("an empty project folder")
def step_empty_project(context):
    assert not any(context.project.folder.iterdir()), "expected the scenario's project folder to start empty"


@when("the operator asks for the example config")
def step_example(context):
    if context.project.config_path.exists():
        context.project.config_before = context.project.config_path.read_text()
    context.result = context.project.operator("config", "example")


@then('the project has a config declaring the VM "{name}"')
def step_has_config(context, name):
    r = context.result
    assert r.exit_code == 0 and context.project.config_path.is_file(), f"expected a config written; {r.describe()}"
    assert name in load_config(context.project.config_path).vms, f"expected the example to declare '{name}'"


@then("checking the config finds it valid")
def step_check(context):
    r = context.project.operator("config", "check", "-c", str(context.project.config_path))
    assert r.exit_code == 0 and ": ok: " in r.stdout, f"expected the example config to pass the check; {r.describe()}"


@when("the operator asks for the version")
def step_version(context):
    context.result = context.project.operator("version")


@then("the operator sees the installed vmfixtures version, the Python version and the QEMU version")
def step_sees_version(context):
    qemu = shutil.which("qemu-system-x86_64")
    qemu_line = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0] \
        if qemu else "QEMU not installed"
    expected = [f"vmfixtures {metadata.version('vmfixtures')}", f"python {platform.python_version()}", qemu_line]
    r = context.result
    assert r.exit_code == 0 and all(e in r.stdout for e in expected), f"expected {expected}; {r.describe()}"
