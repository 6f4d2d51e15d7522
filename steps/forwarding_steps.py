"""Port forwarding: real services on both sides, real ssh tunnels between them."""

import os
import signal
import time

import psutil
from behave import given, then, when

from vmfixtures.procs import process_alive
from vmfixtures.sut.base import BAD_CONFIG, BUSY
from vmfixtures.testkit import HostServer, http_get, serve_in_guest


@given('the VM "{name}" serves "{text}" on its port {port:d}')
def step_guest_serves(context, name, text, port):
    serve_in_guest(context.driver.machine(name), port, text)


@given('the host serves "{text}" on its port {port:d}')
def step_host_serves(context, text, port):
    context.add_cleanup(HostServer(port, text).stop)


@given('the config forwards host port {host:d} to port {guest:d} of "{name}"')
def step_local_forward(context, host, guest, name):
    context.project.declare_forward(name, "local", host, guest)


@given('the config forwards port {guest:d} of "{name}" to host port {host:d}')
def step_remote_forward(context, guest, name, host):
    context.project.declare_forward(name, "remote", host, guest)


@given('the config offers a SOCKS5 proxy into "{name}" on host port {host:d}')
def step_socks_forward(context, name, host):
    context.project.declare_forward(name, "socks5", host)


def _forward(context):
    """Start port forwarding; a forwarder still running but never up fails the step (the adapter raises)."""
    context.outcome = context.sut.start_forwarding(timeout=context.driver.accel().scale(30))
    context.forwarder = context.outcome.process
    return context.outcome


@given("port forwarding runs")
def step_forwarding_runs(context):
    o = _forward(context)  # a refusal here fails the scenario: the Given did not hold
    assert o.done, f"expected port forwarding up; {o.describe()}"


@when("the operator starts port forwarding")
def step_start_forwarding(context):
    _forward(context)  # a refusal is kept for the Then steps


@when("the operator stops port forwarding")
def step_stop_forwarding(context):
    ports = [f["host"] for f in context.project.forwards]
    # the tunnels' processes, by the host's socket table (a remote forward has no host listener)
    context.tunnel_pids = sorted({pid for port in ports for _, pid in context.host.listeners(int(str(port).rsplit(":", 1)[-1])) if pid})
    context.outcome = context.sut.stop_forwarding(context.forwarder)


@when("the ssh process of the tunnel on host port {port:d} is killed")
def step_kill_tunnel(context, port):
    holders = {pid for _, pid in context.host.listeners(port) if pid}  # the socket table says who listens
    assert len(holders) == 1, f"expected one process listening on host port {port}, found {holders}"
    context.killed_tunnel = holders.pop()
    os.kill(context.killed_tunnel, signal.SIGKILL)


@then("the tunnel on host port {port:d} is listening again in a new process")
def step_restored(context, port):
    deadline = time.monotonic() + context.driver.accel().scale(30)
    while True:
        holders = {pid for _, pid in context.host.listeners(port) if pid and pid != context.killed_tunnel}
        if holders and all(process_alive(p) for p in holders):
            return
        assert time.monotonic() < deadline, f"expected a new process listening on host port {port} after " \
                                            f"pid {context.killed_tunnel} was killed; none within the deadline"
        time.sleep(0.05)


@then('the host gets "{text}" from 127.0.0.1:{port:d}')
def step_host_gets(context, text, port):
    got = http_get(f"http://127.0.0.1:{port}/").strip()
    assert got == text, f"expected {text!r} through host port {port}, got {got!r}"


@then("host port {port:d} listens on 127.0.0.1 only")
def step_loopback_only(context, port):
    addrs = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert addrs == {"127.0.0.1"}, f"expected host port {port} bound to 127.0.0.1 only, it listens on {addrs}"


@then('the guest of "{name}" gets "{text}" from 127.0.0.1:{port:d}')
def step_guest_gets(context, name, text, port):
    got = context.driver.machine(name).succeed(
        ["python3", "-c", f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/').read().decode())"])
    assert got.strip() == text, f"expected {text!r} from the guest's 127.0.0.1:{port}, got {got.strip()!r}"


@then("through the proxy on port {proxy:d} the host gets \"{text}\" from the VM's 127.0.0.1:{port:d}")
def step_socks_gets(context, proxy, text, port):
    got = http_get(f"http://127.0.0.1:{port}/", socks5=f"127.0.0.1:{proxy}").strip()
    assert got == text, f"expected {text!r} through the SOCKS5 proxy, got {got!r}"


@then("no ssh process of the tunnels remains")
def step_no_ssh(context):
    o = context.outcome
    assert o.done, f"expected a clean stop; {o.describe()}"
    alive = [p for p in context.tunnel_pids if process_alive(p)]
    assert context.tunnel_pids and not alive, f"expected tunnels {context.tunnel_pids} gone, alive: {alive}"


@then("nothing listens on host ports {ports}")
def step_ports_closed(context, ports):
    wanted = {int(p) for p in ports.replace(" and ", ",").split(",")}
    busy = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == "LISTEN"} & wanted
    assert not busy, f"expected host ports {sorted(wanted)} closed, still listening: {sorted(busy)}"


@then('the command fails with a config error for "{field}"')
def step_config_field_error(context, field):
    o = context.outcome
    config = str(context.project.config_path)
    assert o.refused_for(BAD_CONFIG) and o.where and o.where[0] == config and o.config_field == field, \
        f"expected a config error naming {config} and {field}; {o.describe()}"


@then("port forwarding is refused, naming host port {port:d} and the process that holds it")
def step_port_taken(context, port):
    o = context.outcome
    holders = {pid for _, pid in context.host.listeners(port) if pid}  # who listens, by the socket table
    assert o.refused_for(BUSY, f"127.0.0.1:{port}") and o.holder in holders, \
        f"expected port forwarding refused, naming host port {port} and its holder (one of {holders}); {o.describe()}"
