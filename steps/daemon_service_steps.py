"""The daemon under systemd: installed, observed through systemd and the socket, uninstalled."""

import os

from behave import then, when

from vmfixtures import paths
from vmfixtures.client import Client
from vmfixtures.daemon import systemd
from vmfixtures.testkit import wait_for


def _socket():
    """The service's own socket (the spec's daemon holds the default one); short, as socket paths must be."""
    return paths.daemon_socket().parent / f"service-{os.getpid()}.sock"


@when("the operator installs the daemon as a systemd service")
def step_install(context):
    context.outcome = context.sut.install_service(_socket())
    context.add_cleanup(context.sut.uninstall_service, _socket())
    assert context.outcome.done, f"expected the service installed; {context.outcome.describe()}"


@then("systemd reports the service active and its daemon answers on the socket")
def step_active(context):
    assert systemd.status() == "active", f"expected {systemd.UNIT} active, systemd says {systemd.status()!r}"
    wait_for(Client(_socket()).alive, 30, "the service's daemon answering on its socket")


@when("the operator uninstalls the service")
def step_uninstall(context):
    context.outcome = context.sut.uninstall_service(_socket())
    assert context.outcome.done, f"expected the service removed; {context.outcome.describe()}"


@then("systemd no longer runs the service and nothing answers on the socket")
def step_gone(context):
    state = systemd.status()
    assert state != "active", f"expected the service stopped, systemd says {state!r}"
    assert not (systemd.unit_dir() / systemd.UNIT).exists(), "expected the unit file removed"
    assert not Client(_socket()).alive(), "expected no daemon on the socket"
