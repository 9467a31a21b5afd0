"""Blind review tab: pairs of images with the same prompt and seed from two runs, sides randomised, names hidden;
votes per reviewer; each run's win rate with a 95% interval and the number of votes.

Data: api.services.reviews (next_pair, add_vote, win_rates); the REST API reports the same win rates.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from api.schemas import ReviewPair, VoteCreate
from api.services import Services
from api.services import reviews as review_service
from api.services import samples as sample_service
from ui.common import (
    authenticate,
    comparison_choices,
    comparison_run_ids,
    owned_runs,
    run_choices,
    run_label,
    team_session,
)
from ui.samples import data_uri

WIN_COLUMNS = ["run", "vs", "win rate", "95% interval", "wins", "losses", "ties", "votes"]


def _pair_runs(run_a: int | None, run_b: int | None) -> list[int]:
    if not run_a or not run_b or int(run_a) == int(run_b):
        raise gr.Error("Choose two different runs to review.")
    return [int(run_a), int(run_b)]


def next_pair(services: Services, token: str | None, run_a: int | None, run_b: int | None) -> dict[str, Any]:
    """A random matched pair at each run's latest samples: the prompt, both images (full size) and the sample ids.

    Nothing in the result tells which run is on which side.
    """
    run_ids = _pair_runs(run_a, run_b)
    with team_session(services, token) as (session, principal):
        pair = review_service.next_pair(session, team_id=principal.team_id, run_ids=run_ids)
        runs = owned_runs(session, principal, run_ids)
        images = [_image(session, services, runs, i) for i in (pair.left_sample_id, pair.right_sample_id)]
    return {"pair": pair.model_dump(), "left": images[0], "right": images[1]}


def _image(session: Any, services: Services, runs: list[Any], sample_id: int) -> str:
    for run in runs:  # the sample belongs to one of the two runs; ask the service which
        try:
            path = sample_service.sample_image_path(
                session, run=run, sample_id=sample_id, data_dir=services.settings.DATA_DIR
            )
        except Exception:  # noqa: BLE001, S112 - not this run's sample (NotFoundError), try the other
            continue
        return data_uri(path)
    return ""


def latest_pair(services: Services, token: str | None) -> tuple[int, int] | None:
    """The two runs Blind review opens on: the newest comparison's first two, else the team's two newest runs."""
    if authenticate(services, token) is None:
        return None
    groups = comparison_choices(services, token)
    run_ids = comparison_run_ids(services, token, groups[0][1]) if groups else []
    if len(run_ids) >= 2:
        return run_ids[0], run_ids[1]
    newest = [run_id for _label, run_id in run_choices(services, token)[:2]]
    return (newest[1], newest[0]) if len(newest) == 2 else None


def vote(services: Services, token: str | None, pair: dict[str, Any] | None, choice: str, reviewer: str) -> str:
    if not pair:
        raise gr.Error("Load a pair first.")
    shown = ReviewPair.model_validate(pair)
    body = VoteCreate(
        left_sample_id=shown.left_sample_id,
        right_sample_id=shown.right_sample_id,
        choice=choice,
        reviewer=(reviewer or "").strip() or "anonymous",
    )
    with team_session(services, token) as (session, principal):
        review_service.add_vote(session, team_id=principal.team_id, body=body)
    return f"Vote recorded: {choice}."


def win_table(services: Services, token: str | None, run_a: int | None, run_b: int | None) -> pd.DataFrame:
    """Win rates of the two runs against each other (ties count half; Wilson 95% interval)."""
    run_ids = [int(r) for r in (run_a, run_b) if r]
    with team_session(services, token) as (session, principal):
        labels = {r.id: run_label(r) for r in owned_runs(session, principal, run_ids)}
        rates = review_service.win_rates(session, team_id=principal.team_id, run_ids=run_ids or None)
    rows = [
        [
            labels.get(w.run_id, f"#{w.run_id}"),
            labels.get(w.opponent_id, f"#{w.opponent_id}"),
            "" if w.win_rate is None else f"{w.win_rate:.0%}",
            "" if w.ci_low is None else f"{w.ci_low:.0%} – {w.ci_high:.0%}",
            w.wins,
            w.losses,
            w.ties,
            w.n,
        ]
        for w in rates
    ]
    return pd.DataFrame(rows, columns=WIN_COLUMNS)


def _img_html(src: str, side: str) -> str:
    if not src:
        return f'<div class="fd-review fd-empty">{side}: no image</div>'
    return f'<figure class="fd-review"><img src="{src}" alt="{side}"><figcaption>{side}</figcaption></figure>'


def build(services: Services, token: gr.BrowserState) -> Any:
    gr.Markdown(
        "Pick two runs (or two evaluation runs of checkpoints). Each pair shows the same prompt and seed; which "
        "side is which run is random and hidden. Votes are stored under your reviewer name."
    )
    with gr.Row():
        run_a = gr.Dropdown(label="Run A", choices=[], value=None)
        run_b = gr.Dropdown(label="Run B", choices=[], value=None)
        reviewer = gr.Textbox(label="Reviewer", placeholder="your name")
        start = gr.Button("Next pair", variant="primary", scale=0)
    prompt = gr.Markdown(elem_id="review-prompt")
    with gr.Row(equal_height=True):
        left = gr.HTML(elem_id="review-left")
        right = gr.HTML(elem_id="review-right")
    with gr.Row():
        buttons = {
            c: gr.Button(label, elem_id=f"vote-{c}")
            for c, label in (("left", "◀ Left is better"), ("tie", "Tie"), ("right", "Right is better ▶"))
        }
    message = gr.Markdown()
    wins = gr.Dataframe(headers=WIN_COLUMNS, label="Win rates", interactive=False, elem_id="review-wins")
    pair = gr.State(None)

    def load(token: str, a: int | None, b: int | None) -> tuple:
        shown = next_pair(services, token, a, b)
        p = shown["pair"]
        return (
            shown["pair"],
            f"**Prompt:** {p['prompt']} · seed {p['seed']}",
            _img_html(shown["left"], "left"),
            _img_html(shown["right"], "right"),
            win_table(services, token, a, b),
        )

    outputs = [pair, prompt, left, right, wins]
    start.click(load, [token, run_a, run_b], outputs, api_name="review_pair")
    for choice, button in buttons.items():
        button.click(
            lambda t, p, r, c=choice: vote(services, t, p, c, r),
            [token, pair, reviewer],
            message,
            api_name=f"vote_{choice}",
        ).success(load, [token, run_a, run_b], outputs, api_visibility="private")

    def pickers(token: str) -> tuple:
        choices = run_choices(services, token)
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    def open_latest(token: str) -> tuple:
        """After login: the latest comparison's two runs picked, and their first pair shown once they have samples."""
        picked = latest_pair(services, token)
        if picked is None:
            return (gr.skip(),) * (2 + len(outputs))
        try:
            shown = load(token, *picked)
        except gr.Error:  # no matched samples yet (the runs just started): the runs are picked, "Next pair" loads
            shown = (gr.skip(),) * len(outputs)
        return (*picked, *shown)

    return pickers, [run_a, run_b], (open_latest, [run_a, run_b, *outputs])
