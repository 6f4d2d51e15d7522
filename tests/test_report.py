"""The Allure report: what a run's results say (labels, broken hooks, metadata), and rendering them.

The results come from a real behave run of ``tests/fixtures/allure``, a tiny project whose
hooks and cleanups fail on purpose (no VMs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmfixtures.errors import ConfigError, MissingDependency
from vmfixtures.report import render, results

FIXTURE = Path(__file__).parent / "fixtures" / "allure"
BEHAVE = Path(sys.executable).with_name("behave")


def run_fixture(out: Path) -> subprocess.CompletedProcess:
    # plain, not progress: behave's progress formatter has no character for a cleanup error
    return subprocess.run([str(BEHAVE), "-f", "allure_behave.formatter:AllureFormatter", "-o", str(out),
                           "-f", "plain", "--no-junit", "--no-capture"], cwd=FIXTURE, capture_output=True, text=True)


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("allure-results")
    r = run_fixture(out)
    assert r.returncode == 1, f"the fixture fails on purpose; behave said:\n{r.stdout}\n{r.stderr}"
    return out


def by_name(folder: Path) -> dict[str, dict]:
    found = {}
    for path in folder.glob("*-result.json"):
        data = json.loads(path.read_text())
        found[data["name"]] = data
    return found


def labels(result: dict, name: str) -> list[str]:
    return [label["value"] for label in result["labels"] if label["name"] == name]


def attachment_text(folder: Path, result: dict, name: str) -> str:
    sources = [a["source"] for a in result.get("attachments", []) if a["name"] == name]
    assert sources, f"expected an attachment {name!r}, found {[a['name'] for a in result.get('attachments', [])]}"
    return (folder / sources[0]).read_text()


def test_a_failing_after_scenario_hook_makes_the_scenario_broken(fixture_results):
    result = by_name(fixture_results)["The VMs outlive the scenario"]
    assert result["status"] == "broken", result
    assert "survived the end of their lease" in result["statusDetails"]["message"]
    assert "survived the end of their lease" in attachment_text(fixture_results, result, "hook or cleanup error")


def test_a_failing_before_scenario_hook_and_a_failing_cleanup_are_broken(fixture_results):
    found = by_name(fixture_results)
    setup, cleanup = found["The set-up fails"], found["A cleanup fails"]
    assert setup["status"] == "broken" and "did not boot" in setup["statusDetails"]["message"], setup
    assert cleanup["status"] == "broken", cleanup
    assert "the lease could not be ended" in attachment_text(fixture_results, cleanup, "hook or cleanup error")


def test_step_outcomes_are_kept(fixture_results):
    found = by_name(fixture_results)
    assert found["Everything passes"]["status"] == "passed"
    failed = found["A product check fails"]
    assert failed["status"] == "failed"
    assert "Linux version" in attachment_text(fixture_results, failed, "serial console")


def test_labels_come_from_tags(fixture_results):
    found = by_name(fixture_results)
    failed = found["A product check fails"]  # @p0 on the scenario beats the feature's @p1
    assert labels(failed, "severity") == ["critical"]
    assert labels(failed, "epic") == ["reporting"]
    assert labels(failed, "feature") == ["What the report shows"]
    assert labels(failed, "story") == ["seed 001 §2.1"]
    assert labels(found["Another check passes"], "severity") == ["minor"]
    assert labels(found["Everything passes"], "severity") == ["normal"]
    for result in found.values():
        assert {p["name"]: p["value"] for p in result["parameters"]} == {"backend": "qemu", "product": "vmfixtures"}


def test_the_run_writes_environment_categories_and_executor(fixture_results):
    env = (fixture_results / "environment.properties").read_text()
    assert "backend=qemu\n" in env and "host.cores=2\n" in env
    categories = json.loads((fixture_results / "categories.json").read_text())
    assert [c["name"] for c in categories][:3] == ["Leak found after a scenario", "Infrastructure failure",
                                                   "Product failure"]
    executor = json.loads((fixture_results / "executor.json").read_text())
    assert executor["reportName"] and executor["buildName"]


def test_categories_sort_failures_by_kind():
    import re

    def category(status, message):
        for c in results.CATEGORIES:  # first match wins, as in Allure
            if status in c["matchedStatuses"] and re.fullmatch(c.get("messageRegex", r"[\s\S]*"), message):
                return c["name"]

    assert category("broken", "HOOK-ERROR in after_scenario: AssertionError: VMs of 'x' survived the end of "
                              "their lease: ['w']") == "Leak found after a scenario"
    assert category("broken", "vmfixtures.errors.Timeout: VM 'w' did not boot within 60s") == "Infrastructure failure"
    assert category("failed", "AssertionError: expected 3 snapshots, found 2") == "Product failure"
    assert category("broken", "KeyError: 'name'") == "Broken scenario or hook"


def test_missing_or_empty_results_are_one_line(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    for folder in (tmp_path / "nowhere", tmp_path):
        r = subprocess.run([sys.executable, "-m", "vmfixtures", "report", "--results", str(folder),
                            "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("vmfixtures: error: ") and str(folder) in r.stderr
        assert r.stderr.count("\n") == 1, "one line, no traceback"
    assert not (tmp_path / "out").exists()


def test_missing_node_or_allure_is_one_line(tmp_path, monkeypatch, fixture_results):
    monkeypatch.setenv("VMFIXTURES_ALLURE", str(tmp_path / "no-allure" / "cli.js"))
    with pytest.raises(MissingDependency, match="Allure 3 is not installed"):
        render.render([fixture_results], tmp_path / "out")
    monkeypatch.setattr(render, "ALLURE_HOME", tmp_path)
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependency, match="needs Node.js"):
        render.render([fixture_results], tmp_path / "out")
    with pytest.raises(ConfigError, match="no such Allure results folder"):
        render.render([tmp_path / "nowhere"], tmp_path / "out")


def allure_installed():
    try:
        render.allure_command()
    except MissingDependency as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must render the report: {exc}")
        pytest.skip(str(exc))


def test_render_one_html_file_and_keep_history(tmp_path, fixture_results):
    allure_installed()
    out = tmp_path / "report"
    index = render.render([fixture_results], out)
    assert index == out / "index.html" and index.stat().st_size > 100_000
    first = (out / "history.jsonl").read_text().count("\n")
    render.render([fixture_results], out)
    assert (out / "history.jsonl").read_text().count("\n") == first + 1, "each render adds a run to the history"


def test_operator_log_records_outcomes_and_passes_the_rest_through():
    from vmfixtures.report.evidence import OperatorLog
    from vmfixtures.sut.base import Outcome

    class Product:
        name = "fake"

        def stop_vm(self, vm):
            return Outcome("stop", "refused", "unknown-vm", exit_code=3, stderr=f"no VM named {vm}",
                           argv=["fake", "stop", vm])

        def backup_repeated(self):
            return "a process"

    sut = OperatorLog(Product())
    assert sut.name == "fake" and sut.backup_repeated() == "a process"
    assert sut.stop_vm("ghost").refusal == "unknown-vm"
    assert len(sut.outcomes) == 1
    text = sut.transcript()
    assert "$ fake stop ghost" in text and "refused (unknown-vm), exit 3" in text and "no VM named ghost" in text


def test_daemon_log_lines_of_the_scenario_only(tmp_path):
    import time as _time

    from vmfixtures.report.evidence import log_lines_between

    def stamp(t):
        return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t)) + ",000"

    now = _time.time()
    log = tmp_path / "daemon.log"
    log.write_text(f"{stamp(now - 100)} INFO before\n{stamp(now)} WARNING observer: orphan\nTraceback line\n"
                   f"{stamp(now + 100)} INFO after\n")
    assert log_lines_between(log, now - 5, now + 5) == [f"{stamp(now)} WARNING observer: orphan", "Traceback line"]
    assert log_lines_between(tmp_path / "missing.log", now, now) == []


@pytest.mark.vm
def test_a_vm_keeps_a_guest_agent_transcript_for_its_evidence(driver):
    from vmfixtures.spec import VMSpec

    driver.create(VMSpec("web"))
    driver.machine("web").execute("echo transcript-check")
    found = driver.evidence("web")
    assert "guest agent transcript" in found, f"expected a transcript among the evidence, found {found}"
    text = found["guest agent transcript"].read_text()
    assert "guest-exec " in text and '"exited": true' in text, text[-2000:]
