"""The aggregate view in headless Chromium against the real app: a seeded 3-seed clip vs dppo sweep with one
failed run; Compare's "aggregate seeds" toggle shows one band per variant, the failed run counted apart, the
summary with intervals, the rollout axis and the frontier; Samples shows one prompt across variants and seeds; the
New run tab's sweep form queues clip vs dppo x 3 seeds.

UI_SCREENSHOTS=docs/screenshots also writes compare-aggregate.png there (the docs' screenshot; synthetic data).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import TeamToken, make_team_token
from live import SHOTS, no_error_toast, serve

from api.services import Services
from api.settings import Settings
from store.migrate import upgrade
from worker.seed_sweep import seed_sweep

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TeamToken, dict]]:
    data_dir = tmp_path_factory.mktemp("browser-sweep")
    settings = Settings(DATA_DIR=data_dir, DATABASE_URL=f"sqlite:///{data_dir / 'flowdppo.db'}")
    upgrade(settings.DATABASE_URL)
    services = Services.from_settings(settings)
    with services.session() as session:
        team = make_team_token(session)
        _, ids = seed_sweep(session, team_id=team.team_id, data_dir=data_dir, steps=60, failed=("clip", 2))
    with serve(settings, services) as url:
        yield url, team, ids
    services.close()


def test_aggregate_seeds_view(sweep_app, browser, tmp_path: Path) -> None:  # noqa: ANN001
    url, team, ids = sweep_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    shots = Path(SHOTS) if SHOTS else tmp_path
    page.goto(f"{url}/ui/")
    page.locator("#login-token input, #login-token textarea").first.fill(team.token)
    page.locator("#login-button").click()
    page.get_by_text(f"Logged in as team {team.name}").wait_for(timeout=15_000)
    # Compare opens on the sweep (6 runs); the per-run charts first
    page.wait_for_function(
        "document.querySelectorAll('#compare-reward-kl .scatterlayer .trace').length >= 6", timeout=30_000
    )
    page.locator("#aggregate-toggle input").check()
    note = page.locator("#aggregate-note")
    note.get_by_text("Aggregated over seeds").wait_for(timeout=20_000)
    assert f"#{ids[('clip', 2)]} clip seed 2 (failed)" in note.inner_text()
    page.wait_for_function(
        "document.querySelectorAll('#aggregate-chart .scatterlayer .trace').length >= 6", timeout=20_000
    )
    legend = page.locator("#aggregate-chart .legend").first.text_content() or ""
    assert "clip (n=2)" in legend and "dppo (n=3)" in legend
    assert page.locator("#aggregate-chart .scatterlayer .trace path.js-fill").count() >= 2  # the bands
    assert not page.locator("#compare-chart").is_visible()  # the per-run charts give way
    summary = page.locator("#aggregate-summary").inner_text()
    assert "3 (2 / 1)" in summary and "3 (3 / 0)" in summary and "[" in summary
    assert page.locator("#aggregate-frontier .scatterlayer .trace").count() >= 2
    page.wait_for_timeout(800)  # let plotly finish laying out
    page.locator("#aggregate-view").screenshot(path=str(shots / "compare-aggregate.png"))
    page.get_by_label("rollouts").check()
    page.wait_for_function(
        "[...document.querySelectorAll('#aggregate-chart .xtitle')].some(t => t.textContent.includes('rollouts'))",
        timeout=20_000,
    )
    no_error_toast(page)

    page.get_by_role("tab", name="Samples").click()
    page.wait_for_function("document.querySelectorAll('#samples-across img').length >= 6", timeout=20_000)
    across = page.locator("#samples-across").inner_text()
    assert "seed 0" in across and "seed 2" in across and "dppo" in across
    page.locator("#samples-seed input").click()  # one seed: the columns become that seed's variants
    page.get_by_role("option", name="seed 1").click()
    page.wait_for_function(
        "document.querySelectorAll('#samples-grid thead th').length === 3", timeout=20_000
    )  # prompt + clip + dppo
    head = page.locator("#samples-grid thead").inner_text()
    assert f"#{ids[('clip', 1)]} clip" in head and f"#{ids[('dppo', 1)]} dppo" in head
    no_error_toast(page)

    # The sweep form: clip vs dppo x 3 seeds by default
    page.get_by_role("tab", name="New run").click()
    page.get_by_text("Sweep: variants x seeds").click()
    page.locator("#submit-sweep").click()
    page.locator("#sweep-message").get_by_text("Submitted sweep: 6 runs").wait_for(timeout=20_000)
    no_error_toast(page)
    assert not page_errors, page_errors
    page.close()
