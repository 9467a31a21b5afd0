"""Exact KL vs Monte Carlo (spec §3) and group/GDPO advantages (spec §5)."""

import pytest
import torch

from trainer.advantages import gdpo_advantages, group_advantages, zero_std_fraction
from trainer.divergence import gaussian_kl


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean_old, mean_new = torch.randn(2, 6), torch.randn(2, 6) * 0.5
    std = torch.full((2, 1), 0.7)
    exact = gaussian_kl(mean_old, mean_new, std, "sum")
    p = torch.distributions.Normal(mean_old, std.expand_as(mean_old))
    q = torch.distributions.Normal(mean_new, std.expand_as(mean_new))
    x = p.sample((200_000,))
    mc = (p.log_prob(x) - q.log_prob(x)).sum(-1).mean(0)
    assert torch.allclose(exact, mc, rtol=0.03, atol=0.02)
    assert torch.allclose(exact, torch.distributions.kl_divergence(p, q).sum(-1), rtol=1e-5)
    assert torch.allclose(gaussian_kl(mean_old, mean_new, std, "mean"), exact / 6, rtol=1e-6)
    assert torch.equal(gaussian_kl(mean_old, mean_old, std), torch.zeros(2))


def test_group_advantages_global_and_group_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(rewards, groups, global_std=True)
    g_std = rewards.std(unbiased=False)
    assert torch.allclose(adv[:3], (rewards[:3] - 2.0) / (g_std + 1e-8))
    assert torch.equal(adv[3:], torch.zeros(3))  # zero-std group carries A = 0
    adv_group = group_advantages(rewards, groups, global_std=False)
    assert torch.allclose(adv_group[:3], (rewards[:3] - 2.0) / (torch.tensor([1.0, 2, 3]).std(unbiased=False)))
    assert zero_std_fraction(rewards, groups) == 0.5


def test_gdpo_normalises_each_reward_within_its_group():
    # Reward b has 100x the scale of reward a; GDPO still weighs them by their weights, not their scales.
    groups = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([0.0, 1.0, 0.0, 1.0])
    b = torch.tensor([100.0, 0.0, 0.0, 100.0])
    adv = gdpo_advantages(torch.stack([a, b], 1), torch.tensor([1.0, 1.0]), groups)
    # group 0: a favours sample 1, b favours sample 0 equally -> both zero; group 1: both favour sample 3.
    assert adv[0] == pytest.approx(adv[1].item()) and adv[3] > 0 > adv[2]
    assert adv.mean().abs() < 1e-6
    assert torch.equal(gdpo_advantages(torch.ones(4, 2), torch.ones(2), groups), torch.zeros(4))


@pytest.mark.parametrize("value", [1 / 3, 2 / 5, 0.7])
def test_flat_groups_get_zero_advantage_despite_float_rounding(value):
    # Equal float32 rewards can have a computed std of ~1e-8; the group is still flat and must carry A = 0.
    groups = torch.tensor([0] * 16 + [1] * 16)
    rewards = torch.cat([torch.full((16,), value), torch.linspace(0, 1, 16)])
    for global_std in (True, False):
        assert torch.equal(group_advantages(rewards, groups, global_std)[:16], torch.zeros(16))
    assert zero_std_fraction(rewards, groups) == 0.5
    # GDPO: a group flat in one reward gets no advantage from that reward, whatever its other reward says.
    second = torch.cat([torch.zeros(16), torch.linspace(1, 0, 16)])
    adv = gdpo_advantages(torch.stack([rewards, second], 1), torch.tensor([1.0, 0.5]), groups)
    assert torch.equal(adv[:16], torch.zeros(16))


def test_gdpo_weights_scale_each_normalised_reward():
    groups = torch.tensor([0, 0, 0, 0])
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    b = torch.tensor([3.0, 2.0, 1.0, 0.0]) * 50
    za = (a - a.mean()) / a.std(unbiased=False)
    zb = (b - b.mean()) / b.std(unbiased=False)
    combined = 2.0 * za + 0.5 * zb
    expected = (combined - combined.mean()) / combined.std(unbiased=False)
    adv = gdpo_advantages(torch.stack([a, b], 1), torch.tensor([2.0, 0.5]), groups)
    assert torch.allclose(adv, expected, atol=1e-5)
