"""New run tab: a preset or every TrainConfig field, submitted as one run or as a comparison of chosen methods.

The form is generated from TrainConfig's fields, grouped by the form group each field declares in its JSON schema
(`json_schema_extra={"group": ...}`, trainer/config.py), so a new config field appears here without a UI change.
Validation is the service's (InvalidConfigError with a `loc` per field); each message is shown under its field.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr
from pydantic import ValidationError

from api.schemas import ComparisonCreate, RunCreate
from api.services import Services
from api.services import comparisons as comparison_service
from api.services import configs as config_service
from api.services import runs as run_service
from api.services.errors import InvalidConfigError
from trainer.config import TrainConfig
from ui.common import team_session

NO_PRESET = "(defaults)"
NULL = "null"
CPS_VARIANTS = {"cps-clip": {"loss": "clip", "sampler": "cps"}, "cps-dppo": {"loss": "dppo", "sampler": "cps"}}
OPEN_GROUPS = ("run", "loss")


@dataclass(frozen=True)
class FieldSpec:
    """How one TrainConfig field is edited: a checkbox, a choice, a number, or text (JSON for lists and unions)."""

    name: str
    group: str
    widget: Literal["checkbox", "dropdown", "number", "text"]
    description: str
    choices: tuple[str, ...] = ()
    integer: bool = False
    text_is_str: bool = False  # a plain string field: the text is the value ('' = null when optional)


def config_groups(model: type = TrainConfig) -> dict[str, list[str]]:
    """Field names by the form group in each field's JSON schema extra, in field order (no group: 'other')."""
    groups: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        groups.setdefault(str(extra.get("group", "other")), []).append(name)
    return groups


def field_spec(name: str, group: str, model: type = TrainConfig) -> FieldSpec:
    info = model.model_fields[name]
    annotation = info.annotation
    args = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)]
    description = info.description or ""
    if kinds == [bool]:
        return FieldSpec(name, group, "checkbox", description)
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is Literal:
        choices = tuple(str(c) for c in typing.get_args(kinds[0])) + ((NULL,) if optional else ())
        return FieldSpec(name, group, "dropdown", description, choices=choices)
    if not optional and kinds in ([int], [float]):
        return FieldSpec(name, group, "number", description, integer=kinds == [int])
    return FieldSpec(name, group, "text", description, text_is_str=kinds == [str])


def form_specs(model: type = TrainConfig) -> list[FieldSpec]:
    return [field_spec(n, g, model) for g, names in config_groups(model).items() for n in names]


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if spec.widget == "checkbox":
        return bool(value)
    if spec.widget == "dropdown":
        return NULL if value is None else str(value)
    if spec.widget == "number":
        return value
    if spec.text_is_str:
        return "" if value is None else str(value)
    return json.dumps(value)


def from_widget(spec: FieldSpec, raw: Any) -> Any:
    """A widget's value as config JSON; text that is not JSON goes through as a string for pydantic to judge."""
    if spec.widget == "dropdown":
        if raw == NULL:
            return None
        return int(raw) if isinstance(raw, str) and raw.lstrip("-").isdigit() else raw
    if spec.widget == "number":
        return int(raw) if spec.integer and raw is not None and float(raw).is_integer() else raw
    if spec.widget == "text":
        text = "" if raw is None else str(raw).strip()
        if spec.text_is_str:
            return text or None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return raw


def preset_config(name: str | None) -> dict[str, Any]:
    if name in (None, "", NO_PRESET):
        return TrainConfig().model_dump(mode="json")
    presets = {p.name: p.config for p in config_service.list_presets()}
    if name not in presets:
        raise gr.Error(f"unknown preset {name!r}")
    return presets[name]


def preset_values(specs: list[FieldSpec], name: str | None) -> list[Any]:
    config = preset_config(name)
    return [to_widget(s, config.get(s.name)) for s in specs]


def overrides_from_form(specs: list[FieldSpec], preset: str | None, values: list[Any]) -> dict[str, Any]:
    """The fields whose form value differs from the preset's (what the run records as its overrides)."""
    base = preset_config(preset)
    out = {}
    for spec, raw in zip(specs, values, strict=True):
        value = from_widget(spec, raw)
        if value != base.get(spec.name) and not (isinstance(value, list) and value == list(base.get(spec.name) or [])):
            out[spec.name] = value
    return out


def field_errors(err: InvalidConfigError, names: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Messages per field name: by `loc` (…, 'overrides'|variant, field, …), else by a field named in the message
    (cross-field rules name their fields); the rest are general."""
    per_field: dict[str, list[str]] = {}
    general: list[str] = []
    for e in err.errors:
        loc = [str(p) for p in e["loc"]]
        named = [p for p in loc if p in names]
        if not named:
            named = [n for n in names if re.search(rf"\b{re.escape(n)}\b", e["msg"])]
        variant = f" (variant {loc[loc.index('variants') + 1]})" if "variants" in loc[:-1] else ""
        message = e["msg"].removeprefix("Value error, ") + variant
        for n in named or []:
            per_field.setdefault(n, []).append(message)
        if not named:
            general.append(f"{'.'.join(loc)}: {message}")
    return per_field, general


def submit(
    services: Services,
    token: str | None,
    specs: list[FieldSpec],
    preset: str | None,
    values: list[Any],
    *,
    name: str = "",
    tags: str = "",
    comparison: bool = False,
    with_cps: bool = False,
    methods: tuple[str, ...] | list[str] = ("clip", "dppo"),
) -> list[int]:
    """Create one run or a comparison: one variant per method of `methods` (comparison_service.METHODS: clip, dppo,
    its mask variants, grpo-guard, nft, none), same base and seeds; + cps variants. InvalidConfigError propagates."""
    preset = None if preset in (None, "", NO_PRESET) else preset
    overrides = overrides_from_form(specs, preset, values)
    tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()]
    roots = services.settings.INPUT_ROOTS
    with team_session(services, token, keep=(InvalidConfigError,)) as (session, principal):
        if comparison:
            base = {**preset_config(preset), **overrides}
            variants = {**comparison_service.method_variants(methods, base), **(CPS_VARIANTS if with_cps else {})}
            body = _body(
                ComparisonCreate, name=name, preset=preset, overrides=overrides, variants=variants, tags=tag_list
            )
            group = comparison_service.create_comparison(
                session,
                queue=services.queue,
                input_roots=roots,
                team_id=principal.team_id,
                body=body,
                reward_hosts=services.settings.remote_reward_hosts,
                max_queued=services.settings.MAX_QUEUED_RUNS_PER_TEAM,
            )
            return [r.id for r in group.runs]
        run = _body(RunCreate, name=name, preset=preset, overrides=overrides, tags=tag_list)
        created = run_service.create_run(
            session,
            queue=services.queue,
            input_roots=roots,
            team_id=principal.team_id,
            body=run,
            reward_hosts=services.settings.remote_reward_hosts,
            max_queued=services.settings.MAX_QUEUED_RUNS_PER_TEAM,
        )
        return [created.id]


def _body(schema: type[Any], **fields: Any) -> Any:
    """The request body as the REST API validates it; a bad name or tag is an InvalidConfigError naming the field."""
    try:
        return schema(**fields)
    except ValidationError as err:
        raise InvalidConfigError(config_service.validation_errors(err, loc=("body",))) from err


def _widget(spec: FieldSpec, value: Any) -> Any:
    common = dict(label=spec.name, info=spec.description, elem_id=f"cfg-{spec.name}")
    if spec.widget == "checkbox":
        return gr.Checkbox(value=value, **common)
    if spec.widget == "dropdown":
        return gr.Dropdown(list(spec.choices), value=value, **common)
    if spec.widget == "number":
        return gr.Number(value=value, precision=0 if spec.integer else None, **common)
    return gr.Textbox(value=value, max_lines=4, **common)


def build(services: Services, token: gr.BrowserState) -> Any:
    """The form and its buttons; returns the submit button events' `.success` hook targets (run ids state)."""
    specs = form_specs()
    presets = [NO_PRESET] + [p.name for p in config_service.list_presets()]
    with gr.Row():
        preset = gr.Dropdown(presets, value="shapes-dppo", label="Preset", scale=2, elem_id="submit-preset")
        name = gr.Textbox(label="Name", placeholder="optional", scale=2)
        tags = gr.Textbox(label="Tags", placeholder="comma separated", scale=2)
    initial = dict(zip((s.name for s in specs), preset_values(specs, "shapes-dppo"), strict=True))
    widgets = []
    for group in config_groups():
        with gr.Accordion(group, open=group in OPEN_GROUPS):
            with gr.Row(equal_height=False):
                for spec in (s for s in specs if s.group == group):
                    with gr.Column(min_width=220):
                        widgets.append(_widget(spec, initial[spec.name]))
    summary = gr.Markdown(elem_id="submit-message")
    with gr.Row():
        run_btn = gr.Button("Submit run", variant="primary", elem_id="submit-run")
        pair_btn = gr.Button("Submit as comparison of the methods", variant="primary", elem_id="submit-comparison")
        cps = gr.Checkbox(label="+ cps variants (cps-clip, cps-dppo)", value=False)
    methods = gr.CheckboxGroup(
        list(comparison_service.METHODS),
        value=list(comparison_service.CLIP_VS_DPPO),
        label="Methods of the comparison (one run each, same base config and seeds)",
        elem_id="submit-methods",
    )
    submitted = gr.State([])

    def fill(name: str | None) -> list[Any]:
        return [gr.update(value=v, info=s.description) for s, v in zip(specs, preset_values(specs, name), strict=True)]

    def send(
        token: str,
        preset: str,
        run_name: str,
        run_tags: str,
        with_cps: bool,
        chosen: list[str],
        comparison: bool,
        *values: Any,
    ) -> list[Any]:
        try:
            ids = submit(
                services,
                token,
                specs,
                preset,
                list(values),
                name=run_name,
                tags=run_tags,
                comparison=comparison,
                with_cps=with_cps,
                methods=chosen,
            )
        except InvalidConfigError as err:
            per_field, general = field_errors(err, [s.name for s in specs])
            text = "**Not submitted:** fix the fields marked ⚠." + "".join(f"\n- {g}" for g in general)
            updates = [
                gr.update(info=("⚠ " + "; ".join(per_field[s.name])) if s.name in per_field else s.description)
                for s in specs
            ]
            return [text, gr.skip(), *updates]
        what = "comparison runs" if comparison else "run"
        ok = f"Submitted {what} {', '.join(f'#{i}' for i in ids)}: see Runs (live) and Compare."
        return [ok, ids, *(gr.update(info=s.description) for s in specs)]

    preset.input(fill, preset, widgets, api_name="preset_config")
    outputs = [summary, submitted, *widgets]
    inputs = [token, preset, name, tags, cps, methods]
    run_event = run_btn.click(
        lambda t, p, n, g, c, m, *v: send(t, p, n, g, c, m, False, *v),
        [*inputs, *widgets],
        outputs,
        api_name="submit_run",
    )
    pair_event = pair_btn.click(
        lambda t, p, n, g, c, m, *v: send(t, p, n, g, c, m, True, *v),
        [*inputs, *widgets],
        outputs,
        api_name="submit_comparison",
    )
    return [run_event, pair_event]
