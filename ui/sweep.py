"""Seeds in the dashboard: Compare's "aggregate seeds" view (one curve per variant with its 95% band, step or
rollout axis, the summary with intervals, the reward-vs-KL frontier) and Samples' seed and same-prompt pickers.

Data: api.services.aggregates (one batched metrics read), api.services.samples; figures: ui.plots.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from api.aggregate_schemas import INTERVAL_METHOD
from api.services import Services
from api.services import aggregates as aggregate_service
from api.services import comparisons as comparison_service
from api.services import samples as sample_service
from ui import plots
from ui.common import format_value, owned_runs, team_session

AXES = ["step", "rollouts"]
MAX_POINTS = 400  # per series, as the per-run charts
SUMMARY_COLUMNS = [
    "variant",
    "runs (in / failed)",
    "final held-out reward",
    "best held-out reward",
    "AUC held-out",
    "final KL to base",
    "reward within KL budget",
]


@dataclass
class AggregateView:
    chart: Any
    frontier: Any
    summary: pd.DataFrame
    note: str


def format_interval(iv: Any, digits: int = 4) -> str:
    """'0.712 [0.701, 0.723]' ; the mean alone for one seed; '' for none."""
    if iv.mean is None:
        return ""
    if iv.lo is None:
        return f"{format_value(iv.mean, digits)} (n=1)"
    return f"{format_value(iv.mean, digits)} [{format_value(iv.lo, digits)}, {format_value(iv.hi, digits)}]"


def aggregate_view(
    services: Services,
    token: str | None,
    run_ids: list[int] | None,
    keys: Sequence[str] | None,
    axis: str = "step",
    kl_budget: float | None = None,
) -> AggregateView:
    """The selected runs grouped by variant and averaged over their seeds (failed and cancelled ones counted apart)."""
    with team_session(services, token) as (session, principal):
        runs = owned_runs(session, principal, run_ids)
        variants, budget = aggregate_service.aggregate_runs(
            session, runs=runs, keys=list(keys or []) or None, kl_budget=kl_budget or None, max_points=MAX_POINTS
        )
    colors = plots.variant_colors([v.variant for v in variants])
    bands: dict[str, list[plots.Band]] = {}
    for v in variants:
        for c in v.curves:
            if not c.steps:  # a key this variant never logged (or a dashboard pseudo-key)
                continue
            x = c.rollouts if axis == "rollouts" else c.steps
            label = f"{v.variant} (n={v.n_included})"
            bands.setdefault(c.key, []).append(plots.Band(label, colors[v.variant], x, c.mean, c.lo, c.hi, c.n))
    chart = plots.band_figure(bands, x_title="rollouts (images)" if axis == "rollouts" else "step")
    frontier = plots.frontier_figure(
        [
            plots.Frontier(
                f"{v.variant} (n={v.n_included})",
                colors[v.variant],
                v.frontier.kl,
                v.frontier.reward,
                v.frontier.steps,
                v.frontier.envelope_kl,
                v.frontier.envelope_reward,
            )
            for v in variants
        ],
        reward_title=plots.metric_title(aggregate_service.REWARD_KEY),
    )
    rows = [
        [
            v.variant,
            f"{v.n_runs} ({v.n_included} / {v.n_failed})" + (f", {v.n_active} active" if v.n_active else ""),
            *(format_interval(iv) for iv in (v.final_reward, v.best_reward, v.auc)),
            format_interval(v.final_kl, 3),
            format_interval(v.reward_at_kl),
        ]
        for v in variants
    ]
    left_out = [
        f"#{r.run_id} {v.variant} seed {r.seed} ({r.status})" for v in variants for r in v.runs if not r.included
    ]
    note = f"**Aggregated over seeds.** {INTERVAL_METHOD}. KL budget {format_value(budget, 3) or '—'}" + (
        " (the smallest mean final KL)." if not kl_budget else "."
    )
    if left_out:
        note += f" Left out of the aggregate ({len(left_out)}): " + ", ".join(left_out) + "."
    return AggregateView(chart, frontier, pd.DataFrame(rows, columns=SUMMARY_COLUMNS), note)


def build(services: Services, token: gr.BrowserState, runs: Any, keys: Any) -> Any:
    """Compare's toggle row and the (hidden) aggregate view; returns wire(per_run_components) to hide those."""
    with gr.Row():
        on = gr.Checkbox(False, label="Aggregate seeds (one curve per variant, 95% band)", elem_id="aggregate-toggle")
        axis = gr.Radio(AXES, value="step", label="x axis (aggregate)", elem_id="aggregate-axis")
        budget = gr.Number(None, label="KL budget (empty: smallest mean final KL)", elem_id="aggregate-budget")
    with gr.Column(visible=False, elem_id="aggregate-view") as box:
        note = gr.Markdown(elem_id="aggregate-note")
        chart = gr.Plot(show_label=False, elem_id="aggregate-chart")
        frontier = gr.Plot(show_label=False, elem_id="aggregate-frontier")
        summary = gr.Dataframe(
            headers=SUMMARY_COLUMNS,
            label="Summary over seeds",
            interactive=False,
            elem_id="aggregate-summary",
            wrap=True,
        )

    def wire(per_run: list[Any]) -> None:
        def show(token: str, enabled: bool, run_ids: list[int], metric_keys: list[str], x: str, b: float | None):
            if not enabled:
                return gr.Column(visible=False), *(gr.skip(),) * 4, *(gr.Plot(visible=True) for _ in per_run)
            view = aggregate_view(services, token, run_ids, metric_keys, x, b)
            hidden = (gr.Plot(visible=False) for _ in per_run)
            return gr.Column(visible=True), view.note, view.chart, view.frontier, view.summary, *hidden

        gr.on(
            [on.change, runs.change, keys.change, axis.change, budget.submit],
            show,
            [token, on, runs, keys, axis, budget],
            [box, note, chart, frontier, summary, *per_run],
            api_name="aggregate",
        )

    return wire


# --- Samples: one seed of a sweep, or one prompt across its variants and seeds ---


def group_runs(services: Services, token: str | None, comparison_id: int | None) -> list[Any]:
    if comparison_id is None:
        return []
    with team_session(services, token) as (session, principal):
        return comparison_service.get_comparison(
            session, team_id=principal.team_id, comparison_id=int(comparison_id)
        ).runs


def seed_choices(services: Services, token: str | None, comparison_id: int | None) -> list[tuple[str, int]]:
    seeds = sorted({r.seed for r in group_runs(services, token, comparison_id) if r.seed is not None})
    return [(f"seed {s}", s) for s in seeds]


def runs_of_seed(services: Services, token: str | None, comparison_id: int | None, seed: int | None) -> list[int]:
    """The group's runs with that seed (one column per variant), or every run for no seed."""
    runs = group_runs(services, token, comparison_id)
    return [r.id for r in runs if seed is None or r.seed == seed]


def prompt_across_variants(
    services: Services, token: str | None, comparison_id: int | None, prompt: str | None
) -> tuple[list[str], str]:
    """The group's prompts, and an HTML table of `prompt` (its first seed) at each run's latest logged step:
    rows = variants, columns = seeds."""
    from ui.samples import Cell, _figure, data_uri  # the Samples tab's cell and image helpers

    runs = group_runs(services, token, comparison_id)
    if not runs:
        return [], '<p class="fd-empty">Pick a comparison group.</p>'
    table: dict[str, dict[int | None, Cell | None]] = {}
    prompts: list[str] = []
    with team_session(services, token) as (session, principal):
        for public in runs:
            (run,) = owned_runs(session, principal, [public.id])
            steps = sample_service.sample_steps(session, run=run)
            samples = sample_service.list_samples(session, run=run, step=steps[-1]) if steps else []
            prompts.extend(s.prompt for s in samples if s.prompt not in prompts)
            chosen = prompt or (prompts[0] if prompts else None)
            sample = next((s for s in samples if s.prompt == chosen), None)
            cell = None
            if sample is not None:
                path = sample_service.sample_image_path(
                    session, run=run, sample_id=sample.id, data_dir=services.settings.DATA_DIR, thumb=True
                )
                cell = Cell(run.id, sample.step, sample.prompt, sample.seed, dict(sample.rewards), data_uri(path))
            table.setdefault(run.variant or f"#{run.id}", {})[run.seed] = cell
    seeds = sorted({s for row in table.values() for s in row}, key=lambda s: (s is None, s))
    head = "".join(f"<th>seed {s}</th>" for s in seeds)
    body = "".join(
        f'<tr><th class="fd-prompt">{html.escape(variant)}</th>'
        + "".join(_figure(row.get(s), caption=f"<b>step {c.step}</b><br>" if (c := row.get(s)) else "") for s in seeds)
        + "</tr>"
        for variant, row in table.items()
    )
    thead = f"<thead><tr><th>variant</th>{head}</tr></thead>"
    return prompts, f'<table class="fd-grid">{thead}<tbody>{body}</tbody></table>'


def build_samples(services: Services, token: gr.BrowserState, group: Any, runs: Any) -> None:
    """Samples' sweep row: a seed picker (columns become that seed's variants) and one prompt across variants."""
    with gr.Row():
        seed = gr.Dropdown(label="Seed (a sweep's runs of one seed)", choices=[], value=None, elem_id="samples-seed")
        prompt = gr.Dropdown(label="Same prompt across variants and seeds", choices=[], value=None, scale=2)
    across = gr.HTML(elem_id="samples-across")

    def on_group(token: str, comparison_id: int | None) -> tuple:
        prompts, table = prompt_across_variants(services, token, comparison_id, None)
        choices = seed_choices(services, token, comparison_id)
        return gr.Dropdown(choices=choices, value=None), gr.Dropdown(choices=prompts, value=None), table

    def on_prompt(token: str, comparison_id: int | None, chosen: str | None) -> str:
        return prompt_across_variants(services, token, comparison_id, chosen)[1]

    group.change(on_group, [token, group], [seed, prompt, across], api_name="samples_sweep_group")
    seed.input(lambda t, c, s: runs_of_seed(services, t, c, s), [token, group, seed], runs, api_name="samples_seed")
    prompt.input(on_prompt, [token, group, prompt], across, api_name="samples_prompt_across")


# --- New run: a sweep (base preset x variants x seeds, optionally x a grid) ---

SWEEP_VARIANTS_HINT = "clip: loss=clip\ndppo: loss=dppo"


def parse_pairs(text: str | None) -> dict[str, Any]:
    """'steps=30 loss=clip' (spaces or new lines) -> {'steps': 30, 'loss': 'clip'}, values as `--set`'s."""
    from trainer.config import parse_overrides

    return parse_overrides((text or "").split())


def parse_variant_lines(text: str | None) -> dict[str, dict[str, Any]]:
    """One variant a line, 'name: key=value key=value'; empty = clip vs dppo."""
    from api.sweep_cli import parse_variants

    items = []
    for line in (text or "").splitlines():
        if line.strip():
            name, _, rest = line.partition(":")
            items.append([name.strip(), *rest.split()])
    variants = parse_variants([])  # the default pair
    return {name: parse_pairs(" ".join(pairs)) for name, *pairs in items} if items else variants


def submit_sweep(
    services: Services,
    token: str | None,
    *,
    preset: str,
    overrides: str = "",
    variants: str = "",
    seeds: str = "3",
    grid: str = "",
    grid_variants: str = "",
    name: str = "",
) -> list[int]:
    """Queue the sweep; ValueError (unparseable text) and InvalidConfigError (a 422) propagate."""
    from api.schemas import ComparisonCreate
    from api.services.errors import InvalidConfigError
    from api.sweep_cli import parse_grid, parse_seeds

    body = ComparisonCreate(
        name=name,
        preset=preset,
        overrides=parse_pairs(overrides),
        variants=parse_variant_lines(variants),
        seeds=parse_seeds(seeds or "1"),
        grid=parse_grid(grid.split()),
        grid_variants=[v.strip() for v in grid_variants.split(",") if v.strip()] or None,
    )
    with team_session(services, token, keep=(InvalidConfigError,)) as (session, principal):
        group = comparison_service.create_comparison(
            session,
            queue=services.queue,
            input_roots=services.settings.INPUT_ROOTS,
            team_id=principal.team_id,
            body=body,
            max_runs=services.settings.MAX_SWEEP_RUNS,
        )
    return [r.id for r in group.runs]


def build_submit(services: Services, token: gr.BrowserState, presets: Sequence[str]) -> Any:
    """The New run tab's sweep form; returns the submit event (the app refreshes Runs after it)."""
    from pydantic import ValidationError

    from api.services.errors import InvalidConfigError

    with gr.Accordion("Sweep: variants x seeds (x a grid), aggregated on Compare", open=False):
        with gr.Row():
            preset = gr.Dropdown(list(presets), value="shapes-dppo", label="Base preset", elem_id="sweep-preset")
            name = gr.Textbox(label="Name", placeholder="optional")
            seeds = gr.Textbox("3", label="Seeds: N (0..N-1) or a list 0,1,2", elem_id="sweep-seeds")
        with gr.Row():
            variants = gr.Textbox(
                label="Variants, one a line: name: key=value ...", placeholder=SWEEP_VARIANTS_HINT, lines=3
            )
            overrides = gr.Textbox(label="Base overrides: key=value ...", placeholder="steps=30", lines=3)
            grid = gr.Textbox(label="Grid: key=v1,v2 ...", placeholder="delta=1e-5,1e-6,1e-7", lines=3)
            grid_variants = gr.Textbox(label="Grid applies to (comma separated; empty = all)", placeholder="dppo")
        button = gr.Button("Submit sweep", variant="primary", elem_id="submit-sweep")
        message = gr.Markdown(elem_id="sweep-message")

    def send(token: str, *values: Any) -> str:
        keys = ("preset", "name", "seeds", "variants", "overrides", "grid", "grid_variants")
        try:
            ids = submit_sweep(services, token, **dict(zip(keys, values, strict=True)))
        except InvalidConfigError as err:
            return "**Not submitted:**\n\n" + "\n".join(f"- `{line}`" for line in err.message.splitlines())
        except (ValueError, ValidationError) as err:
            return f"**Not submitted:** {html.escape(str(err))}"
        return f"Submitted sweep: {len(ids)} runs (#{ids[0]}..#{ids[-1]}); Compare opens it with 'Aggregate seeds'."

    inputs = [token, preset, name, seeds, variants, overrides, grid, grid_variants]
    return button.click(send, inputs, message, api_name="submit_sweep")
