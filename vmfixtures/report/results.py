"""What a behave run adds to its Allure results, beyond what allure-behave writes.

- ``write_metadata``: ``environment.properties`` (what ran), ``categories.json`` (what kind of
  failure) and ``executor.json`` (who ran it) in the results folder.
- ``AllureRun``: an allure-commons plugin that, as each scenario's result is written, adds
  labels from tags (epic = capability, severity from @p0/@p1/@p2, story = the seed rules),
  the backend and product as parameters, and turns a scenario whose hooks or cleanup failed
  into *broken* with the error attached (allure-behave takes the status from the steps only).
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

import allure_commons
from allure_commons.model2 import Attachment, Label, Parameter, Status, StatusDetails
from allure_commons.utils import uuid4

from ..conformance import capability
from ..errors import ConfigError
from .living import SEED_PREFIX, seed_rule

SEVERITY = {"p0": "critical", "p1": "normal", "p2": "minor"}

# First match wins. Messages come from allure (exception type: message) or behave (HOOK-ERROR ...).
# [\s\S]* on both ends: Allure 2 matches the whole message, Allure 3 searches it.
LEAK = r"[\s\S]*(survived (the end of their lease|destruction)|left \S+ behind|[Ll]eak)[\s\S]*"
CATEGORIES = [
    {"name": "Leak found after a scenario", "matchedStatuses": ["broken", "failed"], "messageRegex": LEAK,
     "description": "Something a scenario started (a VM, its process or its files) outlived the scenario."},
    {"name": "Infrastructure failure", "matchedStatuses": ["broken"],
     "messageRegex": r"[\s\S]*(Timeout|GuestError|MissingDependency|did not (boot|start|get ready|become ready)|"
                     r"timed out|not ready|HOOK-ERROR in before|libvirt|QMP|guest agent|daemon)[\s\S]*",
     "description": "The machinery failed, not the product: a VM did not boot, a guest did not answer in time, "
                    "a host tool or the fixture daemon was missing."},
    {"name": "Product failure", "matchedStatuses": ["failed"],
     "description": "The product did not do what the scenario says (an assertion about it failed)."},
    {"name": "Broken scenario or hook", "matchedStatuses": ["broken"],
     "description": "A step or hook raised an unexpected error: a defect of the specification's code."},
]


def write_metadata(folder: Path, facts: dict[str, str], build: str | None = None) -> None:
    """environment.properties, categories.json and executor.json in the results ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}={_property(v)}" for k, v in facts.items()]
    (folder / "environment.properties").write_text("\n".join(lines) + "\n")
    (folder / "categories.json").write_text(json.dumps(CATEGORIES, indent=1) + "\n")
    ci = os.environ.get("CI") == "true"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    executor = {"name": "CI (.ci/run)" if ci else f"local run on {socket.gethostname()}",
                "type": "ci" if ci else "local", "buildOrder": int(time.time()),
                "buildName": build or f"{facts.get('backend', '?')} / {facts.get('product', '?')}, {stamp}",
                "reportName": "vmfixtures specification"}
    (folder / "executor.json").write_text(json.dumps(executor, indent=1) + "\n")


def _property(value) -> str:
    """One line of a .properties file: no newlines, backslashes kept literal."""
    return str(value).replace("\\", "\\\\").replace("\n", " ")


def allure_folders(config) -> list[Path]:
    """The folders a behave run writes Allure results to (its -o after an Allure -f)."""
    return [Path(out.name) for fmt, out in zip(config.format or [], config.outputs or [])
            if "allure" in fmt.lower() and getattr(out, "name", None)]


def seed_rules(tags) -> list[str]:
    """``@seed.001.3.1.2`` -> ``001 §3.1.2 stop a running VM``: the seed rules a scenario implements."""
    rules = []
    for tag in tags:
        if tag.startswith(SEED_PREFIX):
            try:
                rules.append(seed_rule(tag))
            except ConfigError:
                rules.append(tag)  # the seed-tag test names it; the report still shows it
    return rules


def _scenario_status(scenario) -> str:
    status = getattr(scenario, "status", "")
    return getattr(status, "name", str(status))


class AllureRun:
    """The allure-commons plugin a spec run registers (see ``register``)."""

    def __init__(self, backend: str, product: str):
        self.backend = backend
        self.product = product
        self.scenario = None
        self.problems: dict[int, list[str]] = {}  # id(scenario) -> errors after its steps (cleanups)

    def note_problem(self, scenario, text: str) -> None:
        """An error around the scenario's steps that behave keeps no message for (a failed cleanup)."""
        self.problems.setdefault(id(scenario), []).append(text)

    def on_cleanup_error(self, context, cleanup, exc) -> None:
        """behave's ``context.on_cleanup_error``: a failed scenario cleanup marks its result broken."""
        what = getattr(cleanup, "__qualname__", None) or repr(cleanup)
        print(f"CLEANUP-ERROR in {what}: {type(exc).__name__}: {exc}")
        scenario = getattr(context, "scenario", None)
        if scenario is not None:
            self.note_problem(scenario, f"CLEANUP-ERROR in {what}: {type(exc).__name__}: {exc}")

    # tryfirst: before allure-behave's stop_test builds the result, and before the file logger writes it
    @allure_commons.hookimpl(tryfirst=True)
    def stop_test(self, context):
        self.scenario = context.get("scenario")

    @allure_commons.hookimpl(tryfirst=True)
    def report_result(self, result):
        scenario, self.scenario = self.scenario, None
        if scenario is None:
            return
        self.label(result, scenario)
        self.mark_broken(result, scenario)

    def label(self, result, scenario) -> None:
        feature_tags = list(scenario.feature.tags)
        tags = list(scenario.tags) + [t for t in feature_tags if t not in scenario.tags]  # scenario's first
        levels = [SEVERITY[t] for t in tags if t in SEVERITY]
        keep = [label for label in result.labels if label.name not in ("severity", "epic", "story")]
        added = [Label("severity", levels[0] if levels else "normal")]
        cap = capability(feature_tags)
        if cap:
            added.append(Label("epic", cap))
        added += [Label("story", rule) for rule in seed_rules(tags)]
        result.labels = keep + added
        result.parameters = (result.parameters or []) + [Parameter("backend", self.backend),
                                                         Parameter("product", self.product)]

    def mark_broken(self, result, scenario) -> None:
        """A hook error or failed cleanup becomes *broken* (a failed step stays failed), error attached."""
        problems = self.problems.pop(id(scenario), [])
        status = _scenario_status(scenario)
        if getattr(scenario, "hook_failed", False) or (status in ("hook_error", "cleanup_error") and not problems):
            problems.insert(0, getattr(scenario, "error_message", None) or f"behave: {status}")
        if not problems:
            return
        message = "\n".join(problems)
        trace = ""
        tb = getattr(scenario, "exc_traceback", None)
        if tb is not None and not isinstance(tb, list):
            trace = "".join(traceback.format_tb(tb))
        elif isinstance(tb, list):
            trace = "\n".join(tb)
        if result.status == Status.FAILED:  # the product failed first; the hook error is secondary
            details = result.statusDetails or StatusDetails()
            details.message = (details.message or "") + "\n" + message
            result.statusDetails = details
        else:
            result.status = Status.BROKEN
            result.statusDetails = StatusDetails(message=message, trace=trace or None)
        _attach_to_result(result, "hook or cleanup error", message + ("\n\n" + trace if trace else ""))


def _attach_to_result(result, name: str, text: str) -> None:
    """Attach ``text`` to a result that allure-behave has closed but not yet written."""
    file_name = f"{uuid4()}-attachment.txt"
    result.attachments.append(Attachment(name=name, source=file_name, type="text/plain"))
    allure_commons.plugin_manager.hook.report_attached_data(body=text, file_name=file_name)


def register(backend: str, product: str) -> AllureRun:
    """Register the plugin for this process's behave run (replacing an earlier run's)."""
    plugin = AllureRun(backend, product)
    for old in [p for p in allure_commons.plugin_manager.get_plugins() if isinstance(p, AllureRun)]:
        allure_commons.plugin_manager.unregister(old)
    allure_commons.plugin_manager.register(plugin)
    return plugin


def attach(name: str, text: str) -> None:
    """Attach ``text`` to the running scenario's result, if an Allure formatter is writing one."""
    import allure

    allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)
