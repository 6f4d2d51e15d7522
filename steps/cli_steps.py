"""Getting started: the example config, the config check and the version, through the product."""

import platform

from behave import given, then, when

from vmfixtures.sut.base import EXISTS


@given("an empty project folder")
def step_empty_project(context):
    assert not any(context.project.folder.iterdir()), "expected the scenario's project folder to start empty"


@when("the operator asks for the example config")
def step_example(context):
    if context.project.config_path.exists():
        context.project.config_before = context.project.config_path.read_text()
    context.outcome = context.sut.example_config()


@then('the project has a config declaring the VM "{name}"')
def step_has_config(context, name):
    o = context.outcome
    assert o.done and context.project.config_path.is_file(), f"expected a config written; {o.describe()}"
    vms = (context.host.yaml(context.project.config_path) or {}).get("vms") or {}
    assert name in vms, f"expected the example to declare '{name}', it declares {sorted(vms)}"


@then("checking the config finds it valid")
def step_check(context):
    o = context.sut.check_config()
    assert o.done, f"expected the example config to pass the check; {o.describe()}"


@then("the operator is told that the config already exists")
def step_told_config_exists(context):
    o = context.outcome
    assert o.done and o.note == EXISTS and o.subject == str(context.project.config_path), \
        f"expected success, telling that {context.project.config_path} already exists; {o.describe()}"


@when("the operator asks for the version")
def step_version(context):
    context.outcome = context.sut.version_report()


@then("the operator sees the installed vmfixtures version, the Python version and the QEMU version")
def step_sees_version(context):
    expected = {"version": context.host.installed_version(context.sut.distribution),
                "python": platform.python_version(), "qemu": context.host.qemu_version()}
    o = context.outcome
    assert o.done and o.data == expected, f"expected {expected}; {o.describe()}"
