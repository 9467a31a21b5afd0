"""Take docs/screenshots/compare.png and samples.png from a running dashboard (not a test; run by hand).

    DATA_DIR=/tmp/demo flowdppo up            # then submit a clip vs dppo comparison and let it finish
    .venv/bin/python tests/ui/screenshots.py --url http://127.0.0.1:8000 --token fdp_... --out docs/screenshots

Compare and Samples open on the newest comparison group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from live import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{args.url}/ui/")
        page.locator("#login-token input").fill(args.token)
        page.locator("#login-button").click()
        page.get_by_text("Logged in as team").wait_for(timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#compare-chart .scatterlayer .trace').length >= 8")
        page.wait_for_timeout(1500)  # let plotly finish laying out
        page.screenshot(path=str(args.out / "compare.png"), full_page=True)
        page.get_by_role("tab", name="Samples").click()
        page.wait_for_function("document.querySelectorAll('#samples-history img').length >= 2", timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out / "samples.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
