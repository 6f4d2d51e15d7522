"""scribe: a deterministic coding agent for specifications (no model, no API key).

It reads a task file (``--task``, default ``TASK.md`` in the working folder)
and carries out one step per line, relative to the working folder::

    write  PATH: TEXT            create or overwrite PATH with TEXT
    append PATH: TEXT            add TEXT as a line at the end of PATH
    replace PATH: OLD => NEW     replace OLD with NEW in PATH
    delete PATH                  remove PATH
    wait   PATH                  pause until PATH exists (a hand-off: someone else creates it)

Blank lines and lines starting with '#' are ignored.
Exit codes: 0 all steps done; 2 no task, or a line it does not understand;
3 a step could not be done (file missing, text not found, path escapes the folder).
"""

import argparse
import os
import sys
import time
from pathlib import Path


class StepFailed(Exception):
    pass


def _target(path: str) -> Path:
    root = Path.cwd().resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise StepFailed(f"{path} is outside the working folder")
    return target


WAIT_LIMIT = 600.0  # seconds a `wait` step gives the other side


def run_step(line: str) -> str:
    verb, _, rest = line.partition(" ")
    rest = rest.strip()
    if verb == "wait":
        target, deadline = _target(rest), time.monotonic() + WAIT_LIMIT
        print(f"scribe: waiting for {rest}", flush=True)
        while not target.exists():  # polled: a FUSE mount does not report the host's changes to inotify
            if time.monotonic() > deadline:
                raise StepFailed(f"{rest} did not appear within {WAIT_LIMIT:.0f}s")
            time.sleep(0.1)
        return f"found {rest}"
    if verb == "delete":
        target = _target(rest)
        if not target.exists():
            raise StepFailed(f"cannot delete {rest}: no such file")
        target.unlink()
        return f"deleted {rest}"
    path, sep, text = rest.partition(":")
    if verb not in ("write", "append", "replace") or not sep:
        raise ValueError(line)
    target, text = _target(path.strip()), text.strip()
    if verb == "write":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
        return f"wrote {path.strip()}"
    if not target.is_file():
        raise StepFailed(f"cannot {verb} {path.strip()}: no such file")
    body = target.read_text()
    if verb == "append":
        target.write_text(body + ("" if body.endswith("\n") or not body else "\n") + text + "\n")
        return f"appended to {path.strip()}"
    old, arrow, new = text.partition("=>")
    if not arrow:
        raise ValueError(line)
    old, new = old.strip(), new.strip()
    if old not in body:
        raise StepFailed(f"cannot replace in {path.strip()}: {old!r} not found")
    target.write_text(body.replace(old, new))
    return f"replaced {old!r} with {new!r} in {path.strip()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scribe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="TASK.md", help="task file (default: TASK.md in the working folder)")
    args = parser.parse_args(argv)
    print(f"scribe: working in {os.getcwd()}", flush=True)
    try:
        lines = Path(args.task).read_text().splitlines()
    except OSError as exc:
        print(f"scribe: cannot read the task {args.task}: {exc.strerror}", file=sys.stderr)
        return 2
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            print(f"scribe: {run_step(line)}", flush=True)
        except ValueError:
            print(f"scribe: {args.task}:{n}: cannot understand {line!r}", file=sys.stderr)
            return 2
        except StepFailed as exc:
            print(f"scribe: {args.task}:{n}: {exc}", file=sys.stderr)
            return 3
    print("scribe: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
