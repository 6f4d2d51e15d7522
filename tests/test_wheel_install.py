"""The guest's wheel installer (vmfixtures/guest/wheel_install.py), run on the host against a throwaway
virtual environment: the same script, the same interpreter flags, pip as the judge of the result."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from vmfixtures.agents import WHEEL_INSTALLER, WHEEL_INSTALLER_REFUSED, reference_wheel


@pytest.fixture
def env(tmp_path):
    venv.create(tmp_path / "env", with_pip=False)
    return tmp_path / "env"


def install(env: Path, wheel: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(env / "bin" / "python"), "-I", "-c", WHEEL_INSTALLER, str(wheel)],
                          capture_output=True, text=True)


def site(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def test_installs_the_agent_as_pip_would(env):
    r = install(env, reference_wheel())
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(env / "bin" / "scribe"), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "scribe" in run.stdout, run
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "list"],
                            capture_output=True, text=True).stdout
    assert "vmfixtures-scribe" in listed, f"pip does not see the install: {listed}"
    record = next(site(env).glob("*.dist-info/RECORD")).read_text()
    assert "../../../bin/scribe,sha256=" in record and "scribe_agent/__init__.py,sha256=" in record, record


def test_reinstall_replaces_the_earlier_files(env, tmp_path):
    assert install(env, reference_wheel()).returncode == 0
    stale = site(env) / "scribe_agent" / "stale.py"
    record = next(site(env).glob("*.dist-info/RECORD"))
    stale.write_text("x = 1\n")
    record.write_text(record.read_text() + "scribe_agent/stale.py,,\n")
    assert install(env, reference_wheel()).returncode == 0
    assert not stale.exists(), "a file of the earlier install (listed in its RECORD) survived the reinstall"
    assert (site(env) / "scribe_agent" / "__init__.py").is_file()


def _copy_wheel(src: Path, dest: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for item in zin.infolist():
            name, data = change(item.filename, zin.read(item))
            zout.writestr(name, data)
    return dest


def test_a_platform_wheel_is_left_to_pip(env, tmp_path):
    wheel = _copy_wheel(reference_wheel(), tmp_path / "plat.whl", lambda n, d: (
        n, d.replace(b"Root-Is-Purelib: true", b"Root-Is-Purelib: false") if n.endswith("/WHEEL") else d))
    r = install(env, wheel)
    assert r.returncode == WHEEL_INSTALLER_REFUSED and "not a pure-Python wheel" in r.stderr, r
    assert not list(site(env).glob("*.dist-info")), "a refused wheel must leave nothing installed"


def test_a_path_out_of_the_install_folder_is_refused(env, tmp_path):
    wheel = _copy_wheel(reference_wheel(), tmp_path / "evil.whl", lambda n, d: (
        "../../../../escaped.py" if n.endswith("__main__.py") else n, d))
    r = install(env, wheel)
    assert r.returncode == 2 and "outside the install folder" in r.stderr, r
    assert not (tmp_path / "escaped.py").exists() and not list(site(env).glob("*.dist-info"))


def test_a_file_that_is_no_wheel_is_one_line(env, tmp_path):
    (tmp_path / "junk.whl").write_text("not a zip")
    r = install(env, tmp_path / "junk.whl")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a wheel" in r.stderr, r
