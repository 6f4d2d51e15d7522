"""Render Allure results into one self-contained HTML file with Allure 3 (node; no Java).

Allure 3 is the npm package ``allure``, installed by ``./bootstrap`` into the project's
``.allure/`` folder (``$VMFIXTURES_ALLURE`` may name another ``cli.js``). The report keeps
its history in ``<out>/history.jsonl``, so rendering into the same folder again shows trends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ConfigError, MissingDependency, VmfError
from .results import CATEGORIES

ALLURE_HOME = Path(__file__).resolve().parents[2] / ".allure"  # the checkout's, beside .venv
HISTORY_LIMIT = 30  # runs kept for trends
DEFAULT_RESULTS = (Path("reports/allure-results"), Path("reports/allure-results-libvirt"))
DEFAULT_OUT = Path("reports/allure-report")


def allure_command() -> list[str]:
    """``node .../allure/cli.js``; one clear error when node or Allure 3 is missing."""
    local = ALLURE_HOME / "node_modules" / ".bin" / "node"  # ./bootstrap adds one where the system's is older than 20
    node = str(local) if local.is_file() else shutil.which("node")
    if not node:
        raise MissingDependency("the report needs Node.js, and `node` is not on PATH "
                                "(install Debian's nodejs and npm; `./bootstrap test` does)")
    cli = Path(os.environ.get("VMFIXTURES_ALLURE") or ALLURE_HOME / "node_modules" / "allure" / "cli.js")
    if not cli.is_file():
        raise MissingDependency(f"Allure 3 is not installed: no {cli} (`./bootstrap test` installs it with "
                                f"npm into {ALLURE_HOME})")
    return [node, str(cli)]


def check_results(folder: Path) -> int:
    """The number of test results in ``folder``; ConfigError when it is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such Allure results folder (run the spec with "
                          f"-f allure_behave.formatter:AllureFormatter -o {folder})")
    count = sum(1 for _ in folder.glob("*-result.json"))
    if not count:
        raise ConfigError(f"{folder}: no test results in this Allure results folder (*-result.json)")
    return count


def _categories(folders: list[Path]) -> list[dict]:
    """The run's own categories.json (the first folder that has one), else ours."""
    for folder in folders:
        path = Path(folder) / "categories.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise ConfigError(f"{path}: not JSON: {exc}") from None
            if isinstance(data, list):
                return data
    return CATEGORIES


def _properties(path: Path) -> dict[str, str]:
    found = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.lstrip().startswith(("#", "!")):
                found[key.strip()] = value.strip()
    return found


def merged_environment(folders: list[Path]) -> dict[str, str]:
    """One environment for several runs: a fact they share once, a fact that differs per run
    (``backend=qemu | libvirt``, ``libvirt=libvirt: 9.0.0``). Allure shows one folder's otherwise."""
    runs = []
    for folder in folders:
        props = _properties(folder / "environment.properties")
        if props:
            label = props.get("backend", folder.name)
            if props.get("product", "vmfixtures") != "vmfixtures":
                label = f"{props['product']}-{label}"
            runs.append((label, props))
    merged = {}
    for key in dict.fromkeys(k for _, props in runs for k in props):
        values = [(label, props.get(key)) for label, props in runs]
        if all(v == values[0][1] for _, v in values):
            merged[key] = values[0][1]
        elif key == "backend":
            merged[key] = " | ".join(v for _, v in values if v)
        else:
            merged[key] = " | ".join(f"{label}: {v}" for label, v in values if v is not None)
    return merged


def _stage(folders: list[Path], staging: Path) -> Path:
    """Several result folders as one (hard links, so nothing is copied), with one environment."""
    for folder in folders:
        for item in folder.iterdir():
            if item.is_file() and item.name not in ("environment.properties", "executor.json", "categories.json"):
                try:
                    os.link(item, staging / item.name)
                except OSError:  # another file system
                    shutil.copy2(item, staging / item.name)
    env = merged_environment(folders)
    if env:
        (staging / "environment.properties").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    executors = [folder / "executor.json" for folder in folders if (folder / "executor.json").is_file()]
    if executors:
        shutil.copy2(executors[0], staging / "executor.json")
    return staging


def render(results: list[Path], out: Path, name: str = "vmfixtures specification",
           timeout: float = 300.0) -> Path:
    """Render ``results`` (one or more folders) into ``out/index.html``; returns that path.

    ``out/history.jsonl`` carries the history from run to run (the last HISTORY_LIMIT runs)."""
    folders = [Path(f).absolute() for f in results]
    for folder in folders:
        check_results(folder)
    command = allure_command()
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".allure-staging-", dir=out.parent) as staging:
        if len(folders) > 1:
            folders = [_stage(folders, Path(staging))]
        return _generate(command, folders, out, name, timeout)


def _generate(command: list[str], folders: list[Path], out: Path, name: str, timeout: float) -> Path:
    config = {"name": name, "output": str(out), "historyPath": str(out / "history.jsonl"),
              "historyLimit": HISTORY_LIMIT, "categories": _categories(folders),
              "plugins": {"awesome": {"options": {"singleFile": True, "groupBy": ["feature"]}},
                          "agent": {"enabled": False}}}
    with tempfile.TemporaryDirectory(prefix="vmfx-allure-") as tmp:
        rc = Path(tmp) / "allurerc.json"
        rc.write_text(json.dumps(config))
        try:  # cwd: a folder of ours, so that no allurerc of the caller's is read
            proc = subprocess.run([*command, "generate", "--config", str(rc), *map(str, folders)], cwd=tmp,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VmfError(f"Allure did not finish rendering {out} within {timeout:.0f}s") from None
    index = out / "index.html"
    if proc.returncode != 0 or not index.is_file():
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise VmfError(f"Allure could not render the report (exit {proc.returncode}): "
                       f"{lines[-1].strip() if lines else 'no output'}")
    return index
