"""Reward registry: each reward is a factory(device, **options) returning a callable (images, prompts) -> (B,)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

# images: (B, 3, H, W) float32 in [0, 1] on the reward's device; prompts: B strings; returns (B,) float32 on CPU.
RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
RewardFactory = Callable[..., RewardFn]

_FACTORIES: dict[str, RewardFactory] = {}
_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # name -> (allowed, required) option names
# Modules that register rewards when imported; heavy dependencies are imported inside their factories.
_BUILTIN_MODULES = (
    "trainer.rewards.shapes_verifier",
    "trainer.rewards.jpeg",
    "trainer.rewards.clip_score",
    "trainer.rewards.remote",
)


def register_reward(
    name: str, options: Iterable[str] = (), required: Iterable[str] = ()
) -> Callable[[RewardFactory], RewardFactory]:
    """Register a factory under `name`, with the option names it takes (`required` ones among them)."""

    def decorator(factory: RewardFactory) -> RewardFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"reward {name!r} is registered twice")
        _FACTORIES[name] = factory
        _OPTIONS[name] = (frozenset(options) | frozenset(required), frozenset(required))
        return factory

    return decorator


def _load_builtin() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a missing dependency inside an existing module is a real error
                raise


def available_rewards() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def check_reward_options(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown reward, unknown option names or missing required ones.

    Only names: this runs where a run is submitted, which may not see the weights that the worker will load.
    """
    _load_builtin()
    if name not in _FACTORIES:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    allowed, required = _OPTIONS[name]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"reward {name!r}: unknown options {unknown}; allowed: {sorted(allowed) or 'none'}")
    missing = sorted(k for k in required if options.get(k) in (None, ""))
    if missing:
        raise ValueError(f"reward {name!r} needs options {missing}, e.g. {{{missing[0]!r}: ...}}")


def build_reward(name: str, options: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> RewardFn:
    """Instantiate reward `name` with its options (e.g. a local weights path)."""
    options = options or {}
    check_reward_options(name, options)
    return _FACTORIES[name](device=torch.device(device), **options)
