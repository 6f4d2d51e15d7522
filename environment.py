"""Hooks only: own the run's VMs, skip what this host cannot do, keep evidence.

- before_all: reap VMs of runs that died (SIGKILL), claim this run's storage,
  build the guest image if it is not cached, probe the accelerator.
- @requires.<capability> tags skip scenarios with the reason the probe gave.
- after_scenario: attach each VM's serial console when the scenario failed,
  then destroy every VM the scenario made and prove none is left.
- SIGTERM is turned into KeyboardInterrupt so behave runs after_all, and an
  atexit handler destroys the run's VMs if behave never got there.
"""

import atexit
import os
import re
import signal
import sys
from pathlib import Path

from vmfixtures import capabilities
from vmfixtures.scope import RunScope
from vmfixtures.testkit import Project

EVIDENCE_DIR = Path("reports/evidence")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def before_all(context):
    signal.signal(signal.SIGTERM, _terminate)
    context.scope = RunScope(quiet=False)
    for line in context.scope.start():
        print(f"vmfixtures: reaped {line}", file=sys.stderr)
    atexit.register(context.scope.finish)
    context.owner_pid = os.getpid()
    context.capabilities = {}
    qemu = capabilities.probe_qemu()
    context.capabilities["qemu"] = qemu
    if qemu.available:
        driver = context.scope.driver()
        driver.image()  # builds with progress lines when not cached
        accel = driver.accel()
        print(f"vmfixtures: accelerator {accel.name} ({accel.reason}); storage {context.scope.storage}",
              file=sys.stderr)
        context.capabilities["kvm"] = capabilities.probe("kvm", accel.name)


def _capability(context, name):
    if name not in context.capabilities:
        context.capabilities[name] = capabilities.probe(name)
    return context.capabilities[name]


def before_scenario(context, scenario):
    for tag in scenario.effective_tags:
        if tag.startswith("requires."):
            cap = _capability(context, tag.removeprefix("requires."))
            if not cap.available:
                scenario.skip(reason=cap.reason)
                return
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")[:60]
    context.project = Project(context.scope.dir / "projects" / slug, context.scope)
    context.driver = context.scope.driver()
    context.driver.quiet = True
    context.pids = {}


def after_scenario(context, scenario):
    if not hasattr(context, "driver"):
        return
    if scenario.status == "failed":
        _attach_consoles(context, scenario)
    leftovers = context.scope.destroy_vms()
    del context.driver
    assert not leftovers, f"VMs of scenario '{scenario.name}' survived destruction: {leftovers}"


def _attach_consoles(context, scenario):
    try:
        import allure
    except ImportError:  # allure-behave is optional for a plain run
        allure = None
    folder = EVIDENCE_DIR / re.sub(r"[^A-Za-z0-9]+", "-", scenario.name).strip("-")
    for name in context.driver.names():
        log = context.driver.vm_dir(name) / "console.log"
        if not log.exists():
            continue
        text = log.read_text(errors="replace")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}-console.log").write_text(text)
        if allure:
            allure.attach(text, name=f"{name} serial console", attachment_type=allure.attachment_type.TEXT)
        print(f"--- serial console of {name} (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]))


def after_all(context):
    if hasattr(context, "scope"):
        leftovers = context.scope.finish()
        if leftovers:
            print(f"vmfixtures: LEAK after the run: {leftovers}", file=sys.stderr)
            raise AssertionError(f"the run left VMs behind: {leftovers}")
