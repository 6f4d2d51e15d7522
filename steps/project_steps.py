"""The project folder and its config, as the operator writes it."""

from behave import given


@given("a project whose config declares the VMs:")
def step_declare_vms(context):
    for row in context.table:
        context.project.declare_vm(row["name"], cpus=int(row["cpus"]), memory=row["memory"], disk=row["disk"])


@given('the config now asks for "{name}" with {cpus:d} cpus and {memory} of memory')
def step_change_spec(context, name, cpus, memory):
    context.project.declare_vm(name, **{**context.project.vms[name], "cpus": cpus, "memory": memory})


@given('the config gives "{name}" the memory "{memory}"')
def step_bad_memory(context, name, memory):
    context.project.declare_vm(name, **{**context.project.vms[name], "memory": memory})
