"""The dashboard's Blocks (login + one tab per module) and its mounting at /ui inside the FastAPI app.

Login: a team token, checked by api.services.teams and remembered in the browser (gr.BrowserState, encrypted with
the server's SECRET_KEY). Every event re-checks it, so the Gradio API is as guarded as the REST one.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from fastapi import FastAPI

from api.services import Services
from api.services.configs import list_presets
from ui import compare, detail, review, runs, samples, submit, sweep
from ui.common import LOGIN_HINT, authenticate, comparison_choices, comparison_run_ids, latest_run_id

UI_PATH = "/ui"
TOKEN_KEY = "flowdppo-token"
# (every, older than) in seconds: Gradio's copies of returned files (checkpoint archives are large) are deleted
# after an hour, long enough for the browser to fetch them; without it they stay until the server stops.
CACHE_CLEANUP = (3600, 3600)
CSS = """
.fd-grid { border-collapse: collapse; margin: 4px 0; }
.fd-grid th, .fd-grid td { padding: 4px 8px; text-align: center; vertical-align: top; font-size: 13px; }
.fd-grid thead th { position: sticky; top: 0; background: var(--background-fill-primary); z-index: 2; }
.fd-grid th.fd-prompt { text-align: left; max-width: 240px; font-weight: normal; }
.fd-grid figure { margin: 0; }
.fd-grid img { width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated; border-radius: 4px;
  cursor: zoom-in; transition: transform .15s ease; background: #eee; }
.fd-grid img:focus { transform: scale(3.2); position: relative; z-index: 20; outline: none; cursor: zoom-out;
  box-shadow: 0 6px 30px rgba(0,0,0,.45); }
.fd-grid figcaption { font-size: 11px; line-height: 1.3; color: var(--body-text-color-subdued); }
.fd-cell.fd-missing { color: var(--body-text-color-subdued); font-size: 11px; }
.fd-review { margin: 0 auto; text-align: center; }
.fd-review img { width: min(100%, 384px); aspect-ratio: 1; object-fit: contain; image-rendering: pixelated; }
.fd-empty { color: var(--body-text-color-subdued); }
"""


def login(services: Services, token: str) -> tuple[Any, ...]:
    """Check the token; returns (token to remember, who is logged in, the cleared input, the login row hidden)."""
    principal = authenticate(services, token)
    if principal is None:
        raise gr.Error("Unknown or revoked token. " + LOGIN_HINT, title="Login failed")
    return token.strip(), _who(principal), "", gr.Row(visible=False), gr.Button(visible=True)


def restore(services: Services, token: str | None) -> tuple[Any, ...]:
    """On page load: the remembered token's team (login row hidden), or the login hint."""
    principal = authenticate(services, token)
    if principal is None:
        return LOGIN_HINT, gr.Row(visible=True), gr.Button(visible=False)
    return _who(principal), gr.Row(visible=False), gr.Button(visible=True)


def logout() -> tuple[Any, ...]:
    return "", LOGIN_HINT, gr.Row(visible=True), gr.Button(visible=False)


def _who(principal: Any) -> str:
    return f"Logged in as team **{principal.team_name}**" + (" (admin)" if principal.is_admin else "")


def latest_group(services: Services, token: str | None) -> tuple[Any, ...]:
    """The newest comparison group preselected in Compare and Samples: the page answers 'did dppo beat clip?'."""
    if authenticate(services, token) is None:
        return (gr.skip(),) * 4
    groups = comparison_choices(services, token)
    if not groups:
        return (gr.skip(),) * 4
    group_id = groups[0][1]
    run_ids = comparison_run_ids(services, token, group_id)
    pick = (gr.Dropdown(choices=groups, value=group_id), run_ids)
    return pick + pick


def _header() -> tuple[Any, ...]:
    """The title, who is logged in, and the login row (hidden once logged in)."""
    with gr.Row(equal_height=True):
        gr.Markdown("## flowdppo · divergence mask (dppo) vs ratio clipping", elem_id="title")
        who = gr.Markdown(LOGIN_HINT, elem_id="login-who")
        logout_btn = gr.Button("Log out", scale=0, size="sm", min_width=90, visible=False)
    with gr.Row(equal_height=True) as login_row:
        token_box = gr.Textbox(label="Team token", type="password", scale=4, elem_id="login-token")
        login_btn = gr.Button("Log in", scale=1, variant="primary", elem_id="login-button")
    return who, logout_btn, login_row, token_box, login_btn


def build_dashboard(services: Services) -> gr.Blocks:
    with gr.Blocks(title="flowdppo", fill_width=True, delete_cache=CACHE_CLEANUP) as demo:
        token = gr.BrowserState("", storage_key=TOKEN_KEY, secret=services.settings.SECRET_KEY)
        who, logout_btn, login_row, token_box, login_btn = _header()
        with gr.Tabs(selected="compare") as tabs:
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_pickers, compare_outputs = compare.build(services, token)
            with gr.Tab("Samples", id="samples") as samples_tab:
                samples_pickers, samples_outputs = samples.build(services, token)
            with gr.Tab("Runs", id="runs") as runs_tab:
                refresh_runs, runs_inputs, runs_outputs, selected, open_detail = runs.build(services, token)
            with gr.Tab("New run", id="submit"):
                submit_events = submit.build(services, token)
                presets = [p.name for p in list_presets()]
                submit_events = [*submit_events, sweep.build_submit(services, token, presets)]  # ui/sweep.py
            with gr.Tab("Blind review", id="review") as review_tab:
                review_pickers, review_outputs, (open_review, open_review_outputs) = review.build(services, token)
            with gr.Tab("Run detail", id="detail"):
                detail_id, show_detail, detail_outputs = detail.build(services, token)

        def pickers_all(t: str) -> tuple:
            if authenticate(services, t) is None:
                return (gr.skip(),) * (len(compare_outputs) + len(samples_outputs) + len(review_outputs))
            return (*compare_pickers(t), *samples_pickers(t), *review_pickers(t))

        def refresh_runs_if_in(t: str, *filters: Any) -> tuple:
            return refresh_runs(t, *filters) if authenticate(services, t) else (gr.skip(), gr.skip())

        all_pickers = [*compare_outputs, *samples_outputs, *review_outputs]
        preselect = [*compare_outputs, *samples_outputs[:2]]

        def open_latest_run(t: str) -> tuple:
            run_id = latest_run_id(services, t)  # Run detail opens on the newest run, not empty
            return (gr.skip(),) * (1 + len(detail_outputs)) if run_id is None else (run_id, *show_detail(t, run_id))

        def after_login(event: Any) -> None:
            (
                event.then(pickers_all, token, all_pickers, api_visibility="private")
                .then(lambda t: latest_group(services, t), token, preselect, api_visibility="private")
                .then(refresh_runs_if_in, runs_inputs, runs_outputs, api_visibility="private")
                .then(open_review, token, open_review_outputs, api_visibility="private")
                .then(open_latest_run, token, [detail_id, *detail_outputs], api_visibility="private")
            )

        after_login(demo.load(lambda t: restore(services, t), token, [who, login_row, logout_btn], api_name="whoami"))
        after_login(
            gr.on(
                [login_btn.click, token_box.submit],
                lambda t: login(services, t),
                token_box,
                [token, who, token_box, login_row, logout_btn],
                api_name="login",
            )
        )
        logout_btn.click(logout, None, [token, who, login_row, logout_btn], api_visibility="private")
        tab_opened = [t.select for t in (compare_tab, samples_tab, review_tab)]
        gr.on(tab_opened, pickers_all, token, all_pickers, api_name="pickers")
        runs_tab.select(refresh_runs, runs_inputs, runs_outputs, api_visibility="private")
        open_detail.click(
            lambda r: (r, gr.Tabs(selected="detail")), selected, [detail_id, tabs], api_visibility="private"
        ).then(show_detail, [token, detail_id], detail_outputs, api_visibility="private")
        for event in submit_events:
            event.then(refresh_runs, runs_inputs, runs_outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=8)
    return demo


def mount_dashboard(app: FastAPI, services: Services) -> None:
    """Mount the dashboard at /ui on the API's app (same port, same services)."""
    gr.mount_gradio_app(
        app,
        build_dashboard(services),
        path=UI_PATH,
        css=CSS,
        footer_links=["api"],
        show_error=True,
        run_history=False,
        theme=gr.themes.Soft(),
    )
