"""The parallel spec runner (vmfixtures.parallel, `vmfixtures spec`) without VMs: the scenario lock
between real processes, feature selection and order, behave's summary, and the command's refusals."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmfixtures.parallel import Feature, Timings, counts, select
from vmfixtures.scope import RunScope

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vmfixtures.parallel import ScenarioLock
    folder, mode, log, hold = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    lock = ScenarioLock(folder)
    lock.acquire(exclusive=mode == "x")
    with open(log, "a") as f:
        f.write(f"{mode} in {time.time()}\\n")
    time.sleep(hold)
    with open(log, "a") as f:
        f.write(f"{mode} out {time.time()}\\n")
    lock.release()
""")


def hold(tmp_path, mode, seconds):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), mode, str(tmp_path / "log"), str(seconds)])


def events(tmp_path):
    return [(m, what, float(t)) for m, what, t in (line.split() for line in (tmp_path / "log").read_text().splitlines())]


def test_shared_holders_overlap_and_an_exclusive_one_runs_alone(tmp_path):
    first = hold(tmp_path, "s", 1.0)
    time.sleep(0.2)
    second = hold(tmp_path, "s", 1.0)
    time.sleep(0.2)
    alone = hold(tmp_path, "x", 0.5)
    time.sleep(0.2)
    late = hold(tmp_path, "s", 0.2)  # comes after the exclusive one asked: must wait for it (fair)
    for p in (first, second, alone, late):
        assert p.wait(20) == 0
    log = events(tmp_path)
    x_in = next(t for m, w, t in log if m == "x" and w == "in")
    x_out = next(t for m, w, t in log if m == "x" and w == "out")
    shared_out = [t for m, w, t in log if m == "s" and w == "out"]
    shared_in = [t for m, w, t in log if m == "s" and w == "in"]
    assert sorted(shared_in)[1] < sorted(shared_out)[0], f"two shared holders did not overlap: {log}"
    assert x_in >= sorted(shared_out)[1], f"the exclusive holder ran beside shared ones: {log}"
    assert sorted(shared_in)[2] >= x_out, f"a shared holder that came later overtook the waiting exclusive one: {log}"


def test_a_holder_killed_releases_the_lock(tmp_path):
    stuck = hold(tmp_path, "x", 60)
    time.sleep(0.5)
    stuck.kill()
    stuck.wait()
    assert hold(tmp_path, "x", 0).wait(10) == 0, "a dead holder's lock was not released"


def test_select_counts_the_scenarios_a_tag_expression_chooses(tmp_path):
    (tmp_path / "a.feature").write_text("@p0\nFeature: A\n  Scenario: one\n    Given x\n  @p1\n  Scenario: two\n    Given x\n")
    (tmp_path / "b.feature").write_text("@p1\nFeature: B\n  Scenario: three\n    Given x\n")
    chosen = select([tmp_path], ["@p0"])
    assert [(f.path.name, f.scenarios) for f in chosen] == [("a.feature", 2)]
    assert [(f.path.name, f.scenarios) for f in select([tmp_path], ["@p1"])] == [("a.feature", 1), ("b.feature", 1)]
    with pytest.raises(Exception, match="not a feature file"):
        select([tmp_path / "missing.feature"], [])


def test_the_longest_feature_starts_first_and_times_are_kept(tmp_path):
    short, long_, new = Feature(Path("s.feature"), 10), Feature(Path("l.feature"), 1), Feature(Path("n.feature"), 3)
    timings = Timings(tmp_path / "t.json")
    short.seconds, short.exit_code, long_.seconds, long_.exit_code = 5.0, 0, 90.0, 0
    new.seconds, new.exit_code = 500.0, 1  # failed: its time is not kept
    timings.save([short, long_, new], "@p0")
    order = Timings(tmp_path / "t.json").order([short, long_, new], "@p0")
    assert [f.path.name for f in order] == ["l.feature", "n.feature", "s.feature"], "3 untimed scenarios guess 12 s"
    assert [f.path.name for f in Timings(tmp_path / "t.json").order([short, long_], "@p1")] == ["s.feature", "l.feature"]


def test_counts_read_behaves_summary():
    out = "...\n1 feature passed, 0 failed, 0 skipped\n14 scenarios passed, 2 failed, 1 error, 3 skipped\n"
    assert counts(out) == {"passed": 14, "failed": 2, "error": 1, "skipped": 3}
    assert counts("1 scenario passed, 0 failed, 0 skipped") == {"passed": 1, "failed": 0, "error": 0, "skipped": 0}
    assert counts("Traceback ...") == {}


def test_a_run_judges_findings_in_its_folder_or_in_no_runs(tmp_path):
    mine, other = RunScope(root=tmp_path), tmp_path / "20260101-000000-1"
    assert mine.concerns(str(mine.dir / "vms" / "devbox"))
    assert not mine.concerns(str(other / "vms" / "devbox")), "another run's VM is its own to judge"
    assert mine.concerns(str(tmp_path.parent / "pool" / "vm1")) and mine.concerns("") and mine.concerns(None)


def test_a_run_folder_being_created_beside_a_starting_run_is_not_reaped(tmp_path):
    starting = tmp_path / "20260101-000000-2"
    (starting / "vms").mkdir(parents=True)  # its owner.json is not written yet
    assert RunScope(root=tmp_path).reap_stale() == [] and starting.is_dir()


@pytest.mark.parametrize("argv,message", [
    (["--workers", "0"], "--workers: 0 must be at least 1"),
    (["-D", "backend"], "-D backend: expected KEY=VALUE"),
    (["--tags", "@no-such-tag"], "no scenario in features matches"),
    (["no/such.feature"], "not a feature file"),
])
def test_the_command_refuses_bad_input_in_one_line(argv, message):
    r = subprocess.run([sys.executable, "-m", "vmfixtures", "spec", *argv], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r


@pytest.mark.vm
def test_a_finished_run_destroys_vms_kept_in_other_storages_of_its_folder(tmp_path):
    """A scenario's second runner keeps its VMs in the project folder (a storage of its own). Removing
    the run's folder from under them, before the daemon reaped them, left their QEMU running."""
    from vmfixtures.backends import open_backend
    from vmfixtures.procs import process_alive
    from vmfixtures.spec import VMSpec

    scope = RunScope(root=tmp_path / "spec-runs", backend="qemu")
    scope.start()
    nested = open_backend("qemu", scope.dir / "projects" / "two-runners" / "tmp1" / "vms")
    nested.create(VMSpec("worker"))
    pid = nested.process("worker").pid
    assert not scope.finish(), "expected nothing left"
    assert not process_alive(pid), f"QEMU pid {pid} of a VM in the run's folder outlived the run"
    assert not scope.dir.exists()


def test_each_run_prints_reasons_unless_a_formatter_is_given():
    from vmfixtures.cli.spec import PROGRESS, worker_args

    assert worker_args(["@p0"], ["backend=qemu"], []) == ["--tags=@p0", "-Dbackend=qemu", "-f", PROGRESS]
    for given in (["-f", "plain"], ["--format=json", "-o", "x.json"], ["-fplain"]):
        assert PROGRESS not in worker_args([], [], given), given


def test_features_that_run_side_by_side_use_host_ports_of_their_own():
    # Features run in parallel on one host: two that forward or serve on one host port take it from
    # each other (a tunnel then reported up was another feature's). Guest ports are per VM.
    import re

    pattern = re.compile(r'host ports? ([\d, and]+)|host serves "[^"]*" on its port (\d+)')
    owners: dict[int, set[str]] = {}
    for feature in sorted((Path(__file__).resolve().parent.parent / "features").glob("*.feature")):
        for match in pattern.finditer(feature.read_text()):
            for port in re.findall(r"\d+", match.group(1) or match.group(2)):
                owners.setdefault(int(port), set()).add(feature.name)
    shared = {port: sorted(names) for port, names in owners.items() if len(names) > 1}
    assert owners and not shared, f"host ports used by more than one feature: {shared}"
