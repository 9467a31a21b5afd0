"""The New run tab's comparison of chosen methods (issue 12): any set of methods as one comparison group."""

from __future__ import annotations

import pytest
from factories import TeamToken

from api.services import Services
from api.services import comparisons as comparison_service
from api.services import runs as run_service
from ui import submit


def _configs(services: Services, team: TeamToken, ids: list[int]) -> dict[str, dict]:
    with services.session() as session:
        runs = [run_service.get_run(session, team_id=team.team_id, run_id=i) for i in ids]
    return {r.variant: r.config for r in runs}


def test_any_set_of_methods_is_one_comparison_on_one_base(services: Services, team: TeamToken) -> None:
    specs = submit.form_specs()
    values = submit.preset_values(specs, "shapes-dppo-symmetric")  # a base that sets dppo's own knob
    values[[s.name for s in specs].index("steps")] = 12
    methods = ["dppo-symmetric", "grpo-guard", "nft", "clip"]
    ids = submit.submit(services, team.token, specs, "shapes-dppo-symmetric", values, comparison=True, methods=methods)
    configs = _configs(services, team, ids)
    assert list(configs) == methods and {c["steps"] for c in configs.values()} == {12}
    assert len({c["seed"] for c in configs.values()}) == 1  # same seeds for every method
    assert {name: c["loss"] for name, c in configs.items()} == {
        "dppo-symmetric": "dppo",
        "grpo-guard": "grpo_guard",
        "nft": "nft",
        "clip": "clip",
    }
    # the base's dppo_mask stays with dppo; the other methods get it back at its default, so they validate
    assert configs["dppo-symmetric"]["dppo_mask"] == "symmetric"
    assert {configs[m]["dppo_mask"] for m in ("grpo-guard", "nft", "clip")} == {"asymmetric"}
    assert configs["nft"]["shared_initial_noise"] is False and configs["nft"]["beta"] == 1e-4  # spec §11


def test_every_method_is_offered_and_unknown_ones_are_refused() -> None:
    assert set(comparison_service.METHODS) >= {"clip", "dppo", "dppo-symmetric", "dppo-first-order", "grpo-guard"}
    assert "nft" in comparison_service.METHODS
    with pytest.raises(submit.InvalidConfigError, match="methods must be among"):
        comparison_service.method_variants(["ppo"])
