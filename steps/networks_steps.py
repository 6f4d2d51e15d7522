"""Networks: the guest tries to reach test services; the services' own logs say who got through."""

import json
import socket

import psutil
from behave import given, then, when

from vmfixtures.spec import load_config
from vmfixtures.sut.services import BANNER, SERVER, ServiceNetwork, loopback_service

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
    fields = {k: v for k, v in context.project.vms.get(name, {}).items() if k != "network"}
    context.project.declare_vm(name, **fields, **({"network": network} if network else {}))
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
    address = context.test_network.address
    got = context.host.guest_connect_all(context.driver.machine(name),
                                         [(address, p) for p in ([port] if port else _ports(ports))])
    context.reached.update({int(k.rsplit(":", 1)[1]): v for k, v in got.items()})


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
    _probe_ran(context.reached)
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


# -- the guest against the host's loopback and other VMs (features/untrusted_guest.feature) --
@given("a service listens on the host's loopback only")
def step_loopback_service(context):
    context.loopback = loopback_service(_free_port(), context.scope.dir / "services" / context.project.folder.name)
    context.add_cleanup(context.loopback.stop)
    context.reached = {}


@given('a VM "{name}" on a network filtered to the port of that service is running')
def step_vm_filtered_to_service(context, name):
    _run_vm(context, name, {"profile": "filtered", "allow": [context.loopback.port]})


@when('the guest of "{name}" tries every address the host could have for it')
def step_guest_tries_host(context, name):
    machine = context.driver.machine(name)
    port = context.loopback.port
    context.reached = context.host.guest_connect_all(machine, [(a, port) for a in _host_addresses_for_guest()],
                                                     timeout=2)


@then("the loopback service never saw the guest")
def step_loopback_untouched(context):
    _probe_ran(context.reached)
    seen = context.loopback.peers()
    got = {a: r for a, r in context.reached.items() if BANNER in r}
    assert context.reached and not seen and not got, \
        f"expected no connection from the guest to the host's 127.0.0.1:{context.loopback.port}; " \
        f"the service saw {seen}, the guest got its banner at {got}"


def _probe_ran(reached: dict) -> None:
    """A negative check means something only when the guest really tried: a probe that never ran
    (no python3, a guest that did not answer) reached nothing too."""
    failed = {k: v for k, v in reached.items() if v.startswith("error: probe exited")}
    assert reached and not failed, f"expected the guest to have tried its connections; the probe did not run: " \
                                   f"{next(iter(failed.values()), 'no target was tried')}"


def _host_addresses_for_guest():
    """Where a guest looks for its host: user networking's gateway, DNS and SMB addresses (QEMU
    maps the first to the host's loopback), and every IPv4 address the host has itself."""
    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return ["10.0.2.2", "10.0.2.3", "10.0.2.4", *own]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@given('the guest of "{name}" serves on port {port:d}')
def step_guest_serves(context, name, port):
    machine = context.driver.machine(name)
    machine.succeed(["sh", "-c", 'setsid python3 -c "$0" 0.0.0.0 "$1" /tmp/peers.log /tmp/ready "$2" '
                     '</dev/null >/dev/null 2>&1 &', SERVER, str(port), BANNER])
    machine.wait_until_succeeds("test -e /tmp/ready", timeout=30)
    context.guest_service = (name, port)


@when('the guest of "{name}" tries every address "{other}" could have')
def step_guest_tries_other(context, name, other):
    machine = context.driver.machine(name)
    port = context.guest_service[1]
    ssh = context.driver.run_info(other)["ssh_port"]  # the host end of the other VM's SSH forward
    targets = [(a, p) for a in ["10.0.2.15", *_host_addresses_for_guest()] for p in (port, ssh)]
    context.reached = context.host.guest_connect_all(machine, targets, timeout=2)


@then('the guest of "{other}" never heard from "{name}"')
def step_other_untouched(context, other, name):
    _probe_ran(context.reached)
    port = context.guest_service[1]
    listening = context.driver.machine(other).execute(["ss", "-Hltn", f"sport = :{port}"]).stdout
    assert "LISTEN" in listening, f"expected the service of '{other}' still listening on port {port} (else " \
                                  f"it could not have heard anyone); ss shows {listening.strip()!r}"
    r = context.driver.machine(other).execute(["cat", "/tmp/peers.log"])
    seen = r.stdout.split() if r.ok else []
    got = {a: v for a, v in context.reached.items() if BANNER in v or v.startswith("SSH-")}
    assert not seen and not got, \
        f"expected '{name}' to reach nothing of '{other}'; '{other}' saw {seen}, '{name}' got answers at {got}"
