"""Property-based fuzzing of the REST API from its own OpenAPI (schemathesis): no input may get a 5xx (issue 14).

Every operation gets positive and negative (schema-violating) examples, sent in process through the ASGI app with a
real admin token (admin routes too), on SQLite and PostgreSQL, with a few runs, samples and a comparison in place so
that some generated ids hit. The examples are derandomized (the same ones every run, so CI is stable) and bounded
to fit the suite; FUZZ_EXAMPLES raises the count for a deeper local run, e.g. FUZZ_EXAMPLES=200.

Left out: the live SSE stream (it never ends for a running run) and GET /workers (each call pings the broker for a
second); their inputs are the run id and after_step, checked by the same types as every other route.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from factories import add_sample_images, make_run, make_team_token
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from api.main import create_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
REPORT = os.environ.get("FUZZ_REPORT")  # a file: one JSON line per call (db, operation, status), for the figures
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def fuzz_token(services) -> dict[str, str]:
    """An admin team with a few runs, samples and a comparison, so that some generated ids exist."""
    with services.session() as session:
        admin = make_team_token(session, admin=True)
        runs = [make_run(session, team_id=admin.team_id) for _ in range(3)]
        for run_id in runs[:2]:
            add_sample_images(session, data_dir=services.settings.DATA_DIR, run_id=run_id, step=1, prompts=["a"])
    return admin.headers


@pytest.fixture(scope="session")
def api_schema(services, fuzz_token):
    app = create_app(services.settings, services)
    schema = schemathesis.openapi.from_asgi(f"{services.settings.API_V1_STR}/openapi.json", app)
    return schema.exclude(path_regex=r"(/metrics/stream$|^/api/v1/workers$)")


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def test_no_input_gets_a_server_error(api_schema, fuzz_token, database_url):
    """Each operation x mode: EXAMPLES examples; any 5xx fails the test, all of them listed at the end."""
    db = database_url.split(":", 1)[0].split("+")[0]
    calls: Counter[int] = Counter()
    server_errors: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:
        for mode in MODES:
            try:
                _fuzzer(operation, mode, headers=fuzz_token, db=db, calls=calls, server_errors=server_errors)()
            except Unsatisfiable:  # a negative example of an operation without parameters does not exist
                continue
    statuses = dict(sorted(calls.items()))
    print(f"fuzz {db}: {len(operations)} operations, {sum(calls.values())} examples, statuses {statuses}")
    assert not server_errors, "\n".join(server_errors[:20])


def _fuzzer(operation: Any, mode: GenerationMode, *, headers, db, calls, server_errors) -> Any:
    """The Hypothesis test of one operation in one generation mode: call it, record 5xx answers."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # the first call of an operation pays for imports and query plans
        derandomize=True,  # the same examples every run: CI stays stable
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every 5xx is reported as found
        database=None,
    )
    def fuzz(case: Any) -> None:
        response = case.call(headers=headers)
        calls[response.status_code] += 1
        _report(db, operation.label, mode.value, response.status_code)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as err:  # noqa: BLE001 - schemathesis raises a failure group; keep fuzzing
            server_errors.append(f"{operation.label} ({mode.value}): {response.status_code} {str(err)[:300]}")

    return fuzz


def _report(db: str, operation: str, mode: str, status: int) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({"db": db, "op": operation, "mode": mode, "status": status}) + "\n")
