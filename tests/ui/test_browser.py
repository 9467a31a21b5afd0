"""The dashboard in headless Chromium against the real app (uvicorn on 127.0.0.1, SQLite, filesystem broker):
log in, see the seeded clip vs dppo comparison in Compare and Samples, submit a comparison, watch Runs update.

Data is pre-seeded through store/ for determinism; the submission is real (validated, stored, queued on the broker).
Playwright drives Debian's /usr/bin/chromium (never a downloaded browser). With CI=true a missing one fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import TeamToken, make_team_token
from live import SHOTS, no_error_toast, serve

from api.services import Services
from api.settings import Settings
from store.migrate import upgrade
from worker.seed import seed_comparison

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TeamToken, Services]]:
    """The real app (API + dashboard) on uvicorn in a thread, with a seeded comparison: (url, team, services)."""
    data_dir = tmp_path_factory.mktemp("browser-data")
    settings = Settings(DATA_DIR=data_dir, DATABASE_URL=f"sqlite:///{data_dir / 'flowdppo.db'}")
    upgrade(settings.DATABASE_URL)
    services = Services.from_settings(settings)
    with services.session() as session:
        team = make_team_token(session)
        seed_comparison(session, team_id=team.team_id, data_dir=data_dir, steps=80)
    with serve(settings, services) as url:
        yield url, team, services


def test_dashboard_login_compare_samples_submit_runs(live_app, browser, tmp_path: Path) -> None:  # noqa: ANN001
    url, team, services = live_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    shots = Path(SHOTS) if SHOTS else tmp_path

    page.goto(f"{url}/")  # / redirects to /ui
    assert page.url.rstrip("/").endswith("/ui")
    page.get_by_text("Log in with a team token").first.wait_for(timeout=30_000)
    no_error_toast(page)  # logged out: the page loads quietly
    page.locator("#login-token input, #login-token textarea").first.fill(team.token)
    page.locator("#login-button").click()
    page.get_by_text(f"Logged in as team {team.name}").wait_for(timeout=15_000)
    page.reload()  # the browser remembers the token (gr.BrowserState)
    page.get_by_text(f"Logged in as team {team.name}").wait_for(timeout=15_000)

    # Compare opens on the newest comparison group: curves of both runs, the efficiency view, the tables.
    chart = page.locator("#compare-chart .js-plotly-plot")
    chart.wait_for(timeout=20_000)
    page.wait_for_function(
        "document.querySelectorAll('#compare-chart .scatterlayer .trace').length >= 16", timeout=20_000
    )
    assert page.locator("#compare-reward-kl .scatterlayer .trace").count() == 2
    legend = page.locator("#compare-chart .legend").first.text_content() or ""
    assert "clip" in legend and "dppo" in legend
    summary = page.locator("#compare-summary").inner_text()
    assert "best reward" in summary and "dppo" in summary
    assert "loss" in page.locator("#compare-diff").inner_text()
    no_error_toast(page)
    page.screenshot(path=str(shots / "compare.png"), full_page=True)

    # Samples: prompts x runs at the latest step, every image decoded.
    page.get_by_role("tab", name="Samples").click()
    page.wait_for_function("document.querySelectorAll('#samples-grid img').length >= 8", timeout=20_000)
    sizes = page.eval_on_selector_all("#samples-grid img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(sizes) == 8 and all(sizes), sizes
    grid = page.locator("#samples-grid").inner_text()
    assert "a red circle" in grid and "step 80" in grid and "shapes 0." in grid
    page.wait_for_function("document.querySelectorAll('#samples-history img').length >= 5", timeout=20_000)
    no_error_toast(page)
    page.screenshot(path=str(shots / "samples.png"), full_page=True)
    page.locator("#samples-grid img").nth(1).click()  # click to enlarge
    page.wait_for_function("getComputedStyle(document.activeElement).transform.startsWith('matrix(3.2')")

    # A real submission: the clip vs dppo pair from the preset, then Runs shows both new runs live.
    page.get_by_role("tab", name="New run").click()
    page.locator("#submit-comparison").click()
    message = page.locator("#submit-message")
    message.get_by_text("Submitted comparison runs").wait_for(timeout=20_000)
    new_ids = [int(part.strip(" #,:")) for part in message.inner_text().split("runs", 1)[1].split(":")[0].split()]
    assert len(new_ids) == 2
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(
        "document.querySelector('#runs-table').innerText.split('queued').length - 1 >= 2", timeout=20_000
    )
    text = page.locator("#runs-table").inner_text()
    for run_id in new_ids:  # cells are one per line: the id, then the run's name
        assert re.search(rf"^{run_id}\n.*(clip|dppo)", text, re.M), text
    no_error_toast(page)
    assert not page_errors, page_errors
    page.close()
