"""Configs from presets, full configs and dotted overrides, validated before anything is stored or queued."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from api.schemas import PresetPublic
from api.services.errors import InvalidConfigError
from trainer.config import EvalConfig, TrainConfig


def list_presets() -> list[PresetPublic]:
    from trainer.presets import PRESETS

    return [PresetPublic(name=name, config=config.model_dump(mode="json")) for name, config in PRESETS.items()]


def resolve_train_config(
    *, preset: str | None, config: TrainConfig | None, overrides: dict[str, Any], loc: tuple[str, ...] = ("body",)
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
    return apply_overrides(base, overrides, loc=(*loc, "overrides"))


def apply_overrides(base: TrainConfig, overrides: dict[str, Any], *, loc: tuple[str, ...]) -> TrainConfig:
    if not overrides:
        return base
    try:
        return base.with_overrides(overrides)
    except ValidationError as err:
        raise InvalidConfigError(validation_errors(err, loc=loc)) from err
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise InvalidConfigError([_error(loc, f"cannot apply overrides: {err}", "value_error", overrides)]) from err


def resolve_eval_config(*, train: TrainConfig, overrides: dict[str, Any], loc: tuple[str, ...]) -> EvalConfig:
    """An EvalConfig for `train` with EvalConfig fields from `overrides` (e.g. {"num_prompts": 8})."""
    try:
        return EvalConfig.model_validate({**overrides, "train": train.model_dump(mode="json")})
    except ValidationError as err:
        raise InvalidConfigError(validation_errors(err, loc=loc)) from err


def validation_errors(err: ValidationError, *, loc: tuple[str, ...]) -> list[dict[str, Any]]:
    """FastAPI-shaped error dicts (JSON-safe) with `loc` prefixed; cf. trainer.config.format_validation_error."""
    return [_error((*loc, *e["loc"]), e["msg"], e["type"], e.get("input")) for e in err.errors()]


def _error(loc: tuple[Any, ...], msg: str, type_: str, value: Any) -> dict[str, Any]:
    safe = value if isinstance(value, str | int | float | bool | type(None) | dict | list) else repr(value)
    return {"loc": list(loc), "msg": msg, "type": type_, "input": safe}
