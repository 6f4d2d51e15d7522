"""Networks: the guest tries to reach test services; the services' own logs say who got through."""

import json

from behave import given, then, when

from vmfixtures.spec import load_config
from vmfixtures.sut.services import BANNER, ServiceNetwork

PROFILES = {"default": None, "isolated": "isolated"}


def _ports(text):
    return [int(p) for p in text.replace(" and ", ",").split(",") if p.strip()]


@given("a test network with services on ports {ports}")
def step_test_network(context, ports):
    net = ServiceNetwork(context.scope.dir / "services" / context.project.folder.name)

    def close():
        left = net.close()
        assert not left, f"expected the test network to be gone, found {left}"

    context.add_cleanup(close)
    for port in _ports(ports):
        net.serve(port)
    context.test_network = net
    context.reached = {}


def _run_vm(context, name, network):
    context.project.declare_vm(name, **({"network": network} if network else {}))
    spec = load_config(context.project.config_path).vm(name)
    context.fixtures.ensure_running([spec], context.lease)


@given('a VM "{name}" on the {profile} network is running')
def step_vm_on_network(context, name, profile):
    assert profile in PROFILES, f"no such network in this spec: {profile} (known: {', '.join(PROFILES)})"
    _run_vm(context, name, PROFILES[profile])


@given('a VM "{name}" on a network filtered to port {port:d} is running')
def step_vm_filtered(context, name, port):
    _run_vm(context, name, {"profile": "filtered", "allow": [port]})


@when('the guest of "{name}" connects to the test service on port {port:d}')
@when('the guest of "{name}" connects to the test services on ports {ports}')
def step_guest_connects(context, name, port=None, ports=None):
    machine = context.driver.machine(name)
    for p in [port] if port else _ports(ports):
        context.reached[p] = context.host.guest_connect(machine, context.test_network.address, p)


@then("the test service on port {port:d} answered the guest")
def step_answered(context, port):
    seen = context.test_network.services[port].peers()
    got = context.reached[port]
    assert seen and got == f"{BANNER} {port}", \
        f"expected the service on port {port} to accept the guest and the guest to read its banner; " \
        f"the service saw {seen or 'no connection'}, the guest got {got!r}"


@then("the test service on port {port:d} never saw the guest")
@then("the test services on ports {ports} never saw the guest")
def step_never_saw(context, port=None, ports=None):
    for p in [port] if port else _ports(ports):
        seen = context.test_network.services[p].peers()
        got = context.reached[p]
        assert not seen and BANNER not in got, \
            f"expected no connection from the guest on port {p}; the service saw {seen}, the guest got {got!r}"


@when('the operator asks for the network of "{name}"')
def step_ask_network(context, name):
    context.outcome = context.sut.network_info(name)
    context.network_of = name


@then("the operator is told the network is filtered to port {port:d}")
def step_told_filtered(context, port):
    o = context.outcome
    assert o.done and o.data["profile"] == "filtered" and o.data["allow"] == [port], \
        f"expected the filtered network allowing port {port}; {o.describe()}"


@then('the operator is told the address the guest of "{name}" has')
def step_told_address(context, name):
    o = context.outcome
    actual = context.host.guest_addresses(context.driver.machine(name))
    assert o.done and actual and sorted(o.data["addresses"]) == sorted(actual), \
        f"expected the addresses the guest lists itself, {actual}; {o.describe()}"


@given('the config gives "{name}" the network {setting}')
def step_bad_network(context, name, setting):
    context.project.declare_vm(name, network=json.loads(setting))
