"""Losses against their definitions (spec §4): the dppo mask's truth table, masked gradients, PPO clipping."""

import itertools

import pytest
import torch

from trainer.config import TrainConfig
from trainer.loss_registry import LOSSES, FlowMatchInputs, LossInputs, LossSpec, compute_loss, trust_region_metrics
from trainer.losses import clip_loss, dppo_loss, pg_loss

DELTA = 1e-5


@pytest.mark.parametrize(
    "adv_sign, ratio_above_one, kl_above_delta",
    list(itertools.product([1.0, -1.0], [True, False], [True, False])),
)
def test_dppo_mask_truth_table(adv_sign, ratio_above_one, kl_above_delta):
    # M = 0 iff D > delta and the update moves further away (A>0, r>1 or A<0, r<1); all 8 cases.
    log_r = 0.01 if ratio_above_one else -0.01
    logp_old = torch.zeros(1, 1)
    logp_new = (logp_old + log_r).requires_grad_()
    kl = torch.full((1, 1), 10 * DELTA if kl_above_delta else 0.1 * DELTA)
    loss, stats = dppo_loss(logp_new, logp_old, torch.tensor([adv_sign]), kl, DELTA)
    moving_away = (adv_sign > 0) == ratio_above_one
    masked = kl_above_delta and moving_away
    assert stats["mask/fraction"] == (1.0 if masked else 0.0)
    loss.backward()
    if masked:  # masked terms count as zero and carry no gradient
        assert loss.item() == 0.0 and logp_new.grad.item() == 0.0
    else:
        r = torch.exp(torch.tensor(log_r))
        assert loss.item() == pytest.approx(-adv_sign * r.item(), rel=1e-6)
        assert logp_new.grad.item() == pytest.approx(-adv_sign * r.item(), rel=1e-5)


def test_dppo_masked_terms_count_as_zeros_in_the_mean():
    logp_old = torch.zeros(2, 2)
    logp_new = torch.tensor([[0.1, 0.1], [0.1, -0.1]], requires_grad=True)
    adv = torch.tensor([1.0, 1.0])
    kl = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # only term (0, 0) is beyond delta and moving away
    loss, stats = dppo_loss(logp_new, logp_old, adv, kl, DELTA)
    r = torch.exp(logp_new.detach())
    assert loss.item() == pytest.approx(-(r[0, 1] + r[1, 0] + r[1, 1]).item() / 4, rel=1e-6)
    loss.backward()
    assert logp_new.grad[0, 0] == 0 and (logp_new.grad.flatten()[1:] != 0).all()
    assert stats["mask/fraction"] == 0.25 and stats["mask/pos_fraction"] == 0.25 and stats["mask/neg_fraction"] == 0


def test_clip_loss_matches_ppo_definition():
    torch.manual_seed(0)
    logp_old = torch.randn(8, 3) * 0.01
    logp_new = logp_old + torch.randn(8, 3) * 1e-3
    adv = torch.randn(8)
    eps = 1e-4
    loss, stats = clip_loss(logp_new, logp_old, adv, eps)
    r = torch.exp(logp_new - logp_old)
    a = adv[:, None]
    # PPO: maximise E[min(r·A, clip(r)·A)]  <=>  minimise E[max(-r·A, -clip(r)·A)]
    expected = -torch.minimum(r * a, r.clamp(1 - eps, 1 + eps) * a).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["clip/fraction"] == pytest.approx(((r - 1).abs() > eps).float().mean().item())


def test_clip_loss_has_no_gradient_beyond_the_trust_region():
    logp_old = torch.zeros(2, 1)
    logp_new = torch.tensor([[0.01], [-0.01]], requires_grad=True)  # r far outside 1 +- 1e-4
    clip_loss(logp_new, logp_old, torch.tensor([1.0, -1.0]), 1e-4)[0].backward()
    assert torch.equal(logp_new.grad, torch.zeros(2, 1))


def test_pg_loss():
    logp = torch.zeros(3, 2, requires_grad=True)
    loss, stats = pg_loss(logp, torch.zeros(3, 2), torch.tensor([1.0, 2.0, -3.0]))
    assert loss.item() == pytest.approx(0.0) and stats["ratio/mean"] == 1.0


def _inputs(B: int = 3, S: int = 2) -> LossInputs:
    return LossInputs(
        logp_new=torch.zeros(B, S, requires_grad=True),
        logp_old=torch.zeros(B, S),
        advantages=torch.ones(B),
        kl=torch.zeros(B, S),
        std=torch.full((S,), 0.1),
        dt=torch.full((S,), -0.1),
    )


def _flow_match_inputs(B: int = 3) -> FlowMatchInputs:
    x0 = torch.randn(B, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    v = torch.randn(B, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return FlowMatchInputs(
        v=v.requires_grad_(), v_old=v + 0.1, x_s=x0 + 0.5, x0=x0, s=torch.full((B,), 0.5), advantages=torch.ones(B)
    )


def _inputs_of(name: str):
    return _flow_match_inputs() if LOSSES[name].family == "forward" else _inputs()


def test_registry_calls_each_loss_with_its_inputs_and_knobs():
    assert set(LOSSES) == {"dppo", "clip", "none", "grpo_guard", "nft"}
    config = TrainConfig(delta=DELTA)
    out, _ = compute_loss("dppo", _inputs(), config)
    assert out.item() == pytest.approx(-1.0)
    inputs = _inputs()
    direct = clip_loss(inputs.logp_new, inputs.logp_old, inputs.advantages, 1e-4)
    assert torch.equal(compute_loss("clip", inputs, TrainConfig(loss="clip"))[0], direct[0])
    with pytest.raises(ValueError, match="loss must be one of"):
        compute_loss("ppo", inputs, config)
    with pytest.raises(ValueError, match="reads FlowMatchInputs"):
        compute_loss("nft", inputs, TrainConfig(loss="nft"))


@pytest.mark.parametrize(
    ("overrides", "knobs"),
    [
        ({"loss": "dppo", "dppo_mask": "first_order"}, {"delta": DELTA, "mask": "first_order"}),
        ({"loss": "clip"}, {"clip_range": 1e-4}),  # clip_range None: the loss's own default (spec §4)
        ({"loss": "clip", "clip_range": 3e-4}, {"clip_range": 3e-4}),
        ({"loss": "grpo_guard"}, {"clip_range": 2e-6, "reweight": True}),  # spec §10
        ({"loss": "grpo_guard", "guard_reweight": False}, {"clip_range": 2e-6, "reweight": False}),
        ({"loss": "nft", "nft_beta": 0.5}, {"beta": 0.5, "adv_clip": 5.0}),  # spec §11
    ],
)
def test_registry_maps_each_parameter_to_its_config_attribute(overrides, knobs):
    config = TrainConfig(**overrides)
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return torch.zeros(()), {}

    spec = LOSSES[config.loss]
    LOSSES[config.loss] = LossSpec(**{**spec.__dict__, "fn": spy})
    try:
        compute_loss(config.loss, _inputs_of(config.loss), config)
    finally:
        LOSSES[config.loss] = spec
    assert seen == knobs


@pytest.mark.parametrize("name", list(LOSSES))
def test_registry_entries_carry_their_facts(name):
    # Every knob is a config field, the trust-region metric is among the loss's stats, 'auto' clip is the entry's.
    spec = LOSSES[name]
    config = TrainConfig(loss=name)
    assert all(hasattr(config, attr) for attr in spec.knobs.values())
    _, stats = compute_loss(name, _inputs_of(name), config)
    assert spec.trust_region_metric is None or spec.trust_region_metric in stats
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())  # converted once, at report time
    assert TrainConfig(loss=name).effective_advantage_clip == spec.advantage_clip


def test_config_choices_and_trust_region_metrics_come_from_the_registry():
    assert TrainConfig.model_fields["loss"].annotation.__args__ == tuple(LOSSES)
    assert trust_region_metrics() == {"mask/fraction": ("dppo",), "clip/fraction": ("clip", "grpo_guard")}
    with pytest.raises(ValueError, match="not LossInputs fields"):
        LossSpec("bad", pg_loss, inputs=("logp_new", "ratio"))
    with pytest.raises(ValueError, match="not FlowMatchInputs fields"):
        LossSpec("bad", pg_loss, inputs=("v", "logp_new"), family="forward")
