"""behave's `progress` formatter, knowing every status: its own map lacks cleanup_error (and a
scenario whose cleanup failed then ends the whole run with a KeyError)."""

from behave.formatter.progress import ScenarioProgressFormatter
from behave.model_type import Status


class Progress(ScenarioProgressFormatter):
    name = "vmfixtures-progress"
    description = "behave's progress dots, with C for a failed cleanup and ? for any status it lacks"
    dot_status = {**ScenarioProgressFormatter.dot_status, Status.cleanup_error: "C"}

    def report_current_scenario_progress(self):
        if self.current_scenario and self.current_scenario.status not in self.dot_status:
            self.stream.write("?")
            self.stream.flush()
            return
        super().report_current_scenario_progress()
