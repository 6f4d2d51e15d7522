"""A VM's working life: the steps are the other features'; this checks what the observer saw at each."""

from behave import then


@then("the observer found nothing amiss after any step")
def step_observer_clean_throughout(context):
    checked = [name for name, _ in context.step_findings]
    amiss = [(name, findings) for name, findings in context.step_findings if findings]
    assert len(checked) >= len(context.scenario.steps) - 1 and not amiss, \
        f"expected an observer pass after each step with nothing amiss; {len(checked)} pass(es), amiss: {amiss}"
