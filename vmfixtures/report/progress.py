"""behave's `progress` formatter, knowing every status, and saying why a scenario failed.

behave's own: its map lacks cleanup_error (a scenario whose cleanup failed then ends the whole run
with a KeyError), and it prints no reason at all, so a failure in CI showed as one letter. This
prints each failed scenario's location, its failing step and the error, at the end of its feature.
"""

from behave.formatter.progress import ScenarioProgressFormatter
from behave.model_type import Status

MAX_LINES = 15  # of one error: the assertion's message, not a page of traceback


class Progress(ScenarioProgressFormatter):
    name = "vmfixtures-progress"
    description = "behave's progress dots, with C for a failed cleanup, ? for any status it lacks, and the reasons"
    dot_status = {**ScenarioProgressFormatter.dot_status, Status.cleanup_error: "C"}

    def __init__(self, stream_opener, config):
        super().__init__(stream_opener, config)
        self.problems: list[tuple[object, object | None]] = []  # (scenario, its failing step or None)

    def report_current_step_progress(self, step):
        if step.status.has_failed() and self.current_scenario is not None:
            self.problems.append((self.current_scenario, step))

    def report_current_scenario_progress(self):
        scenario = self.current_scenario
        if scenario is None:
            return
        if scenario.status.has_failed() and not any(s is scenario for s, _ in self.problems):
            self.problems.append((scenario, None))  # a hook or cleanup failed, not a step
        if scenario.status not in self.dot_status:
            self.stream.write("?")
            self.stream.flush()
            return
        super().report_current_scenario_progress()

    def report_current_scenario_failures(self):
        for scenario, step in self.problems:
            self.stream.write(f"\n  {scenario.status.name.upper()}: {scenario.location}  {scenario.name}\n")
            if step is not None:
                self.stream.write(f"    in step: {step.keyword} {step.name} ({step.status.name})\n")
            for line in _reason(step if step is not None else scenario):
                self.stream.write(f"    {line}\n")
        self.problems = []


def _reason(statement) -> list[str]:
    """The error's lines, at most MAX_LINES. behave clears a step's message when only its after_step
    hook failed; the exception it stored then says it."""
    text = (getattr(statement, "error_message", None) or "").strip()
    exc = getattr(statement, "exception", None)
    if not text and exc is not None:
        text = f"{type(exc).__name__}: {exc}"
    status = getattr(statement, "status", None)
    lines = text.splitlines() or [("behave keeps no message for a failed cleanup: see the CLEANUP-ERROR line above"
                                   if status == Status.cleanup_error else "(behave recorded no message)")]
    return lines[:MAX_LINES] + ([f"... {len(lines) - MAX_LINES} more line(s)"] if len(lines) > MAX_LINES else [])
