"""The New run tab takes the REST API's input rules (issue 14, docs/limits.md): a bad name or tag is a message on the
form, not an uncaught error, and the team's queue cap and remote-reward hosts apply to it as to POST /runs."""

from __future__ import annotations

import pytest
from factories import TeamToken

from api.services import Services
from api.services import runs as run_service
from ui import submit


@pytest.mark.parametrize(("field", "value"), [("run_name", "a\x00b"), ("tags", "ok, " + "t" * 65)])
def test_a_bad_name_or_tag_is_a_form_message(services: Services, team: TeamToken, field: str, value: str) -> None:
    specs = submit.form_specs()
    values = submit.preset_values(specs, "shapes-dppo")
    kwargs = {"name": value} if field == "run_name" else {"tags": value}
    for comparison in (False, True):
        with pytest.raises(submit.InvalidConfigError) as caught:
            submit.submit(services, team.token, specs, "shapes-dppo", values, comparison=comparison, **kwargs)
        _, general = submit.field_errors(caught.value, [s.name for s in specs])
        assert general and general[0].startswith("body.name" if field == "run_name" else "body.tags.1")
    with services.session() as session:
        assert run_service.list_runs(session, team_id=team.team_id).count == 0


def test_the_queue_cap_applies_to_the_form(services: Services, team: TeamToken, monkeypatch) -> None:
    monkeypatch.setattr(services.settings, "MAX_QUEUED_RUNS_PER_TEAM", 1)
    specs = submit.form_specs()
    values = submit.preset_values(specs, "shapes-dppo")
    submit.submit(services, team.token, specs, "shapes-dppo", values)
    with pytest.raises(Exception, match="MAX_QUEUED_RUNS_PER_TEAM"):  # a toast (gr.Error), as every ServiceError
        submit.submit(services, team.token, specs, "shapes-dppo", values, comparison=True)
