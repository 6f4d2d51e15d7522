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


def run_fixture(out: Path, progress: str = "plain") -> subprocess.CompletedProcess:
    return subprocess.run([str(BEHAVE), "-f", "allure_behave.formatter:AllureFormatter", "-o", str(out),
                           "-f", progress, "--no-junit", "--no-capture"], cwd=FIXTURE, capture_output=True, text=True)


def test_progress_dots_survive_a_failed_cleanup(tmp_path):
    """behave's own progress formatter ends the run with a KeyError at a failed cleanup; ours prints C."""
    r = run_fixture(tmp_path, "vmfixtures.report.progress:Progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and "C" in r.stdout, r.stdout + r.stderr


def test_progress_says_why_each_scenario_failed(tmp_path):
    """The dots alone told CI nothing: each failed scenario's step and error follow its feature's line."""
    out = run_fixture(tmp_path, "vmfixtures.report.progress:Progress").stdout
    for expected in ("ERROR: features/other.feature:9  A check after a step fails",
                     # behave itself drops this message: the formatter finds it in the stored exception
                     "in step: Given a check that passes (hook_error)\n"
                     "    RuntimeError: the observer pass after this step failed",
                     "FAILED: features/report.feature:10  A product check fails",
                     "ASSERT FAILED: expected the product to answer yes, it said no",
                     "RuntimeError: the VM did not boot within 60s"):
        assert expected in out, f"expected {expected!r} in the progress output:\n{out}"


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
    assert labels(failed, "story") == ["001 §3.1.2 stop a running VM"]
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


def chromium():
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must check the report in a browser: no chromium (./bootstrap test installs it)")
        pytest.skip("no chromium (Debian package chromium; ./bootstrap test installs it)")
    return found


def browse(tmp_path, url: str, *extra: str) -> str:
    """The page's DOM after its scripts ran, from a headless chromium (no network, a profile of its own)."""
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000",
                        "--window-size=1400,1000", *extra, url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"chromium failed (exit {r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def test_the_report_opens_in_a_browser_with_every_feature_and_the_failures_evidence(tmp_path, fixture_results):
    import hashlib

    allure_installed()
    index = render.render([fixture_results], tmp_path / "report")
    home = browse(tmp_path, index.as_uri(), "--dump-dom")
    for feature in ("What the report shows", "A second capability"):
        assert feature in home, f"expected the feature {feature!r} on the report's front page"
    assert "Everything passes" in home and "The VMs outlive the scenario" in home

    found = by_name(fixture_results)
    for name, attachment in (("A product check fails", "serial console"),
                             ("The VMs outlive the scenario", "hook or cleanup error")):
        test_id = hashlib.md5(found[name]["uuid"].encode()).hexdigest()  # Allure 3's id of a result
        page = browse(tmp_path, f"{index.as_uri()}#/{test_id}", "--dump-dom")
        assert name in page and attachment in page, f"expected {name!r} with its attachment {attachment!r}"

    reports = Path(__file__).resolve().parents[1] / "reports"
    reports.mkdir(exist_ok=True)
    failed_id = hashlib.md5(found["A product check fails"]["uuid"].encode()).hexdigest()
    for shot, url in ((reports / "allure-report.png", index.as_uri()),
                      (reports / "allure-report-failure.png", f"{index.as_uri()}#/{failed_id}")):
        shot.unlink(missing_ok=True)
        browse(tmp_path, url, f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000, f"expected a screenshot of {url}"


def test_every_seed_tag_names_a_known_seed_section():
    from behave.parser import parse_file

    from vmfixtures.report.living import seed_rule, seed_tags

    features = Path(__file__).resolve().parents[1] / "features"
    for path in features.glob("*.feature"):
        feature = parse_file(str(path))
        tags = list(feature.tags) + [t for s in feature.walk_scenarios(with_outlines=True) for t in s.tags]
        for tag in seed_tags(tags):
            seed_rule(tag)  # raises ConfigError naming the tag


def test_seed_rules_read_as_the_seed_names_them():
    from vmfixtures.report.living import seed_rule

    assert seed_rule("seed.001.3.1.2") == "001 §3.1.2 stop a running VM"
    assert seed_rule("seed.000.p0-mounts") == "000 P0 mounts"
    for bad in ("seed.009.1", "seed.001.99", "seed.1.2"):
        with pytest.raises(ConfigError, match=bad.replace(".", r"\.")):
            seed_rule(bad)


def test_the_living_spec_shows_scenarios_status_per_run_and_seed_rules(tmp_path):
    from vmfixtures.report import living

    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "a.feature").write_text(
        "@p0 @lifecycle @seed.000.p0-lifecycle\nFeature: VM lifecycle\n  What operators need.\n\n"
        "  @seed.001.3.1.2\n  Scenario: Stopping a VM powers it off\n    Given a step\n\n"
        "  Scenario Outline: Stops on <signal>\n    Given a step\n\n    Examples:\n"
        "      | signal |\n      | SIGINT |\n      | SIGTERM |\n")
    record = {"run": "qemu", "backend": "qemu", "product": "vmfixtures", "scenarios": [
        {"feature": "VM lifecycle", "name": "Stopping a VM powers it off", "status": "passed", "feature_tags": []},
        {"feature": "VM lifecycle", "name": "Stops on SIGINT -- @1.1 ", "status": "passed", "feature_tags": []},
        {"feature": "VM lifecycle", "name": "Stops on SIGTERM -- @1.2 ", "status": "failed", "feature_tags": []}]}
    skipped = {"run": "multipass", "backend": "multipass", "scenarios": [
        {"feature": "VM lifecycle", "name": "Stopping a VM powers it off", "status": "skipped",
         "reason": "no snap here", "feature_tags": []}]}
    files = []
    for r in (record, skipped):
        files.append(tmp_path / f"{r['run']}.json")
        files[-1].write_text(json.dumps(r))
    out = living.write(tmp_path / "features", files, tmp_path / "living.md")
    text = out.read_text()
    assert "| Stopping a VM powers it off | passed | skipped [1] | 000 P0 VM lifecycle; 001 §3.1.2 stop a running VM |" \
        in text, text
    assert "| Stops on <signal> | **failed 1 of 2** | not run | 000 P0 VM lifecycle |" in text, text
    assert "[1] no snap here" in text
    with pytest.raises(ConfigError, match="no feature files"):
        living.write(tmp_path / "nowhere", files, tmp_path / "x.md")


def test_several_runs_share_one_environment_in_the_report(tmp_path, fixture_results):
    qemu, libvirt = tmp_path / "qemu", tmp_path / "libvirt"
    for folder, extra in ((qemu, ""), (libvirt, "libvirt=9.0.0 at qemu:///system\n")):
        folder.mkdir()
        backend = folder.name
        (folder / "environment.properties").write_text(f"backend={backend}\nhost.cores=2\n{extra}")
    env = render.merged_environment([qemu, libvirt])
    assert env == {"backend": "qemu | libvirt", "host.cores": "2", "libvirt": "libvirt: 9.0.0 at qemu:///system"}

    allure_installed()
    (libvirt / "x-result.json").write_text((next(fixture_results.glob("*-result.json"))).read_text())
    index = render.render([fixture_results, libvirt], tmp_path / "report")
    assert index.is_file()
    assert not list(tmp_path.glob(".allure-staging-*")), "the staging folder is removed"
    assert "x-result.json" not in {p.name for p in fixture_results.iterdir()}, "the results folders are untouched"
