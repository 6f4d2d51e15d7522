"""The conformance table: records of spec runs folded into capability x run cells."""

import json

import pytest

from vmfixtures import conformance
from vmfixtures.errors import ConfigError


def record(run, scenarios, backend="qemu", product="vmfixtures"):
    return {"run": run, "backend": backend, "product": product, "scenarios": scenarios}


def scenario(cap, status, reason=None, error=None):
    return {"feature": f"{cap} feature", "file": "f", "feature_tags": ["p0", cap, "requires.qemu"], "name": "s",
            "tags": [], "status": status, "reason": reason, "error": error}


def test_cells_say_passed_failed_or_skipped_with_the_reason():
    records = [record("qemu", [scenario("mounts", "passed"), scenario("mounts", "passed")]),
               record("libvirt", [scenario("mounts", "failed", error="boom"), scenario("mounts", "passed")],
                      backend="libvirt"),
               record("multipass", [scenario("mounts", "skipped", reason="Multipass is not installed")],
                      backend="multipass")]
    table = conformance.markdown(sorted(records, key=conformance.run_order))
    assert "| mounts | passed 2 | failed 1 of 2 | skipped [1] |" in table
    assert "[1] Multipass is not installed" in table
    assert table.splitlines()[0] == "| Capability | qemu | libvirt | multipass |"
    failures = conformance.as_json(records)["capabilities"]["mounts"]["libvirt"]["failures"]
    assert failures == ["mounts feature: s: boom"]


def test_the_capability_is_the_first_tag_that_is_not_a_priority_or_a_need():
    assert conformance.capability(["p0", "reference", "requires.qemu", "backups"]) == "backups"
    assert conformance.capability(["requires.qemu"]) is None


@pytest.mark.parametrize("text", ["not json", json.dumps([1, 2]), json.dumps({"run": "x"})])
def test_a_file_that_is_no_record_is_one_clear_error(tmp_path, text):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="conformance record"):
        conformance.load(path)
