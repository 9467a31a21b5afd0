"""What the browser tests share: the real app on uvicorn in a thread, Debian's Chromium under Playwright, and the
page checks. Fixtures built on these live in conftest.py; screenshots.py (run by hand) uses the Chromium settings.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from api.services import Services
from api.settings import Settings
from server import create_server

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHOTS = os.environ.get("UI_SCREENSHOTS")  # a folder: the browser tests also write the docs' screenshots there


@contextmanager
def serve(settings: Settings, services: Services) -> Iterator[str]:
    """The app (API + dashboard) on uvicorn in a daemon thread on a free port: yields its URL, stops it after."""
    import uvicorn
    from factories import free_port  # here, not at the top: screenshots.py imports this module without tests/

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_server(settings, services), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[object]:
    """Debian's Chromium under Playwright (never a downloaded browser); skips without one, fails so in CI."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        if IN_CI:
            pytest.fail(f"chromium is required in CI (looked for {CHROMIUM} and on PATH)")
        pytest.skip(f"no chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def no_error_toast(page) -> None:  # noqa: ANN001
    errors = page.locator(".toast-body.error, .toast-wrap .error")
    assert errors.count() == 0, errors.first.inner_text()
