"""Configs from presets, full configs and dotted overrides, validated before anything is stored or queued.

Beyond the trainer's own validation, every file a config names (a `file:` prompt set, model_path, a reward's
`path`/`*_path` option) must lie inside one of the settings' INPUT_ROOTS: a worker reads these files, and what it
fails to parse ends up in the run's error, readable by the team that submitted it. Likewise a remote reward's URL
must name a host of REMOTE_REWARD_HOSTS (`reward_hosts`; empty = remote rewards refused): the worker would call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.schemas import PresetPublic
from api.services.errors import InvalidConfigError
from trainer.config import EvalConfig, OverrideError, TrainConfig
from trainer.hosts import refused_url
from trainer.models.loading import is_hub_id
from trainer.prompts import prompt_file
from trainer.trackers import refused_hosts


def list_presets() -> list[PresetPublic]:
    from trainer.presets import PRESETS

    return [PresetPublic(name=name, config=config.model_dump(mode="json")) for name, config in PRESETS.items()]


def resolve_train_config(
    *,
    preset: str | None,
    config: TrainConfig | None,
    overrides: dict[str, Any],
    input_roots: Sequence[Path],
    loc: tuple[str, ...] = ("body",),
    reward_hosts: Sequence[str] = (),
) -> TrainConfig:
    """The run's config: the preset (or the given config, or the defaults) with `overrides` applied last.

    Raises InvalidConfigError whose `loc` names the field, e.g. ("body", "overrides", "loss").
    """
    base = config if config is not None else TrainConfig()
    if preset is not None:
        from trainer.presets import PRESETS, get_preset

        if preset not in PRESETS:
            allowed = ", ".join(sorted(PRESETS))
            raise InvalidConfigError(
                [_error((*loc, "preset"), f"unknown preset {preset!r}; one of: {allowed}", "value_error", preset)]
            )
        base = get_preset(preset)
    elif config is not None:
        check_input_paths(config, input_roots=input_roots, loc=(*loc, "config"), reward_hosts=reward_hosts)
    return apply_overrides(
        base, overrides, input_roots=input_roots, loc=(*loc, "overrides"), reward_hosts=reward_hosts
    )


def apply_overrides(
    base: TrainConfig,
    overrides: dict[str, Any],
    *,
    input_roots: Sequence[Path],
    loc: tuple[str, ...],
    reward_hosts: Sequence[str] = (),
) -> TrainConfig:
    """`base` with `overrides` applied; a path the overrides set is checked against INPUT_ROOTS (`base`'s were)."""
    if not overrides:
        return base
    try:
        config = base.with_overrides(overrides)
    except ValidationError as err:
        raise InvalidConfigError(validation_errors(err, loc=loc)) from err
    except OverrideError as err:  # `steps.a`: a dotted key through a number, a string, null or past a list's end
        raise InvalidConfigError([_error((*loc, err.key), str(err), "value_error", overrides[err.key])]) from err
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise InvalidConfigError([_error(loc, f"cannot apply overrides: {err}", "value_error", overrides)]) from err
    check_input_paths(config, input_roots=input_roots, loc=loc, unchanged_from=base, reward_hosts=reward_hosts)
    return config


def resolve_eval_config(
    *, train: TrainConfig, overrides: dict[str, Any], input_roots: Sequence[Path], loc: tuple[str, ...]
) -> EvalConfig:
    """An EvalConfig for `train` with EvalConfig fields from `overrides` (e.g. {"num_prompts": 8})."""
    try:
        config = EvalConfig.model_validate({**overrides, "train": train.model_dump(mode="json")})
    except ValidationError as err:
        raise InvalidConfigError(validation_errors(err, loc=loc)) from err
    if config.prompts is not None:  # the train config's paths were checked when its run was submitted
        _raise_outside([(("prompts",), prompt_file(config.prompts))], roots=input_roots, loc=loc)
    return config


def check_input_paths(
    config: TrainConfig,
    *,
    input_roots: Sequence[Path],
    loc: tuple[str, ...],
    unchanged_from: TrainConfig | None = None,
    reward_hosts: Sequence[str] = (),
) -> None:
    """Refuse a config naming a file outside `input_roots` or a remote reward outside `reward_hosts`
    (InvalidConfigError, `loc` + the field's path).

    Paths equal to those of `unchanged_from` (a config already checked) are skipped; reward URLs are always checked.
    """
    known = dict(_input_paths(unchanged_from)) if unchanged_from is not None else {}
    changed = [(field, value) for field, value in _input_paths(config) if known.get(field) != value]
    _raise_outside(changed, roots=input_roots, loc=loc)
    _refuse_remote_trackers(config, loc=loc, unchanged_from=unchanged_from)
    refuse_remote_rewards(config, reward_hosts=reward_hosts, loc=loc)


def refuse_remote_rewards(config: TrainConfig, *, reward_hosts: Sequence[str], loc: tuple[str, ...]) -> None:
    """A 'remote' reward's URL must be http(s) on a host the operator allowed (REMOTE_REWARD_HOSTS; docs/limits.md).

    The worker checks again before each request (trainer/rewards/remote.py); this is the answer at submission.
    """
    errors = [
        _error((*loc, "rewards", i, "options", "url"), f"remote reward: {problem}", "value_error", url)
        for i, reward in enumerate(config.rewards)
        if reward.name == "remote"
        for url in [reward.options.get("url")]
        if (problem := refused_url(str(url), reward_hosts, setting="REMOTE_REWARD_HOSTS")) is not None
    ]
    if errors:
        raise InvalidConfigError(errors)


def _refuse_remote_trackers(config: TrainConfig, *, loc: tuple[str, ...], unchanged_from: TrainConfig | None) -> None:
    """A submitted config mirrors only inside its run's folder (docs/trackers.md): a remote MLflow server would be
    reached by the worker on the team's behalf, and no operator allowlist of tracker hosts exists yet."""
    checked = list(unchanged_from.trackers) if unchanged_from is not None else []
    errors = [
        _error(
            (*loc, "trackers", i, "uri"),
            f"MLflow server {host!r}: a run on the platform mirrors only inside its own folder (a TensorBoard folder "
            "or sqlite:///mlflow.db); send a finished run to a server with `flowdppo export RUN --to mlflow URI`",
            "value_error",
            spec.uri,
        )
        for i, spec in enumerate(config.trackers)
        if spec not in checked
        for host in refused_hosts([spec], ())
    ]
    if errors:
        raise InvalidConfigError(errors)


def _input_paths(config: TrainConfig) -> list[tuple[tuple[Any, ...], str | None]]:
    """(field path, file path) for every file the worker would read for `config`; None where it reads none."""
    found = [((name,), prompt_file(getattr(config, name))) for name in ("train_prompts", "eval_prompts")]
    model_path = config.model_path
    hub = model_path is not None and config.model != "builtin" and is_hub_id(model_path)  # builtin reads a file
    found.append((("model_path",), None if hub else model_path))
    for i, reward in enumerate(config.rewards):
        for key, value in reward.options.items():
            if key == "path" or key.endswith("_path"):
                found.append((("rewards", i, "options", key), str(value)))
    return found


def _raise_outside(
    paths: Sequence[tuple[tuple[Any, ...], str | None]], *, roots: Sequence[Path], loc: tuple[str, ...]
) -> None:
    errors = [
        _error((*loc, *field), message, "value_error", value)
        for field, value in paths
        if value is not None and (message := _outside_roots(value, roots)) is not None
    ]
    if errors:
        raise InvalidConfigError(errors)


def _outside_roots(value: str, roots: Sequence[Path]) -> str | None:
    """Why `value` may not be read (None if it may): it must be absolute and resolve inside one of `roots`."""
    allowed = ", ".join(str(root) for root in roots) or "none configured"
    if "\x00" in value:  # no file has such a name; os.path.realpath would raise
        return f"path {value!r} contains a NUL character: no file under INPUT_ROOTS ({allowed}) has that name"
    if not os.path.isabs(value):
        return f"path {value!r} must be absolute and inside one of INPUT_ROOTS ({allowed})"
    # realpath: "/models/../etc" and links pointing out of a root resolve to where they really lead.
    real = os.path.realpath(value)
    if not any(os.path.commonpath([real, str(root)]) == str(root) for root in roots):
        return f"path {value!r} is outside INPUT_ROOTS ({allowed}); ask an admin to place the file there"
    return None


def validation_errors(err: ValidationError, *, loc: tuple[str, ...]) -> list[dict[str, Any]]:
    """FastAPI-shaped error dicts (JSON-safe) with `loc` prefixed; cf. trainer.config.format_validation_error."""
    return [_error((*loc, *e["loc"]), e["msg"], e["type"], e.get("input")) for e in err.errors()]


def _error(loc: tuple[Any, ...], msg: str, type_: str, value: Any) -> dict[str, Any]:
    safe = value if isinstance(value, str | int | float | bool | type(None) | dict | list) else repr(value)
    return {"loc": list(loc), "msg": msg, "type": type_, "input": safe}
