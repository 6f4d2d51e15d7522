"""Every mutant still applies to the sources: a defect whose text moved away proves nothing."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutants_run", REPO / "mutants" / "run.py")
mutants_run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutants_run  # its dataclasses look their module up there
_spec.loader.exec_module(mutants_run)


@pytest.mark.parametrize("mutant", mutants_run.MUTANTS, ids=lambda m: m.name)
def test_the_mutant_still_applies(mutant, tmp_path):
    target = tmp_path / mutant.file
    target.parent.mkdir(parents=True)
    target.write_text((REPO / mutant.file).read_text())
    mutant.mutate(tmp_path)  # Refusal when its text is gone or found a different number of times
    assert target.read_text() != (REPO / mutant.file).read_text(), f"{mutant.name} changed nothing"
