"""Sampler transitions and log-probs against independent references (spec §2)."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from trainer.sampling import draw_sde_steps, gaussian_log_prob, sample_ode, sample_trajectory, transition


def _sigmas(num_steps=10, shift=3.0):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps))
    return sched, sched.sigmas.float()


def test_schedule_matches_spec_formula():
    # spec §1: s = shift·t/(1+(shift-1)·t) on t = linspace(1, 0, T+1), ending exactly at 0.
    _, sigmas = _sigmas(10, 3.0)
    t = torch.linspace(1, 0, 11)
    assert torch.allclose(sigmas, 3 * t / (1 + 2 * t), atol=1e-6)


def test_ode_step_equals_diffusers_euler_step():
    sched, sigmas = _sigmas()
    x, v = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for k in (0, 4, 9):
        sched._step_index = k  # diffusers' scheduler keeps its position as state
        expected = sched.step(v, sched.timesteps[k], x).prev_sample
        mean, std = transition("ode", v, x, sigmas[k], sigmas[k + 1], 0.7)
        assert torch.allclose(mean, expected, atol=1e-6)
        assert float(std.abs().max()) == 0.0


def test_log_prob_equals_torch_normal():
    mean, x = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    std = torch.full((4, 1, 1, 1), 0.3)
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x)
    assert torch.allclose(gaussian_log_prob(x, mean, std, "sum"), ref.sum(dim=(1, 2, 3)), atol=1e-4)
    assert torch.allclose(gaussian_log_prob(x, mean, std, "mean"), ref.mean(dim=(1, 2, 3)), atol=1e-6)


def test_flow_sde_formula_by_hand():
    x, v = torch.randn(1, 4), torch.randn(1, 4)
    s, s_next, a = 0.8, 0.6, 0.7
    g = a * math.sqrt(s / (1 - s))
    dt = s_next - s
    mean, std = transition("flow_sde", v, x, s, s_next, a)
    assert torch.allclose(mean, x + dt * (v + g**2 / (2 * s) * (x + (1 - s) * v)), atol=1e-6)
    assert math.isclose(float(std.flatten()[0]), g * math.sqrt(-dt), rel_tol=1e-6)


def test_flow_sde_at_sigma_one_uses_sigma_max():
    # s == 1 would divide by zero; spec §2 substitutes s~ = sigmas[1].
    x, v = torch.randn(2, 4), torch.randn(2, 4)
    mean, std = transition("flow_sde", v, x, 1.0, 0.9, 0.7, sigma_max=0.96)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert math.isclose(float(std.flatten()[0]), 0.7 * math.sqrt(1 / (1 - 0.96)) * math.sqrt(0.1), rel_tol=1e-5)
    with pytest.raises(ValueError, match="sigma_max"):
        transition("flow_sde", v, x, 1.0, 0.9, 0.7)


def test_cps_formula_and_zero_std_at_last_step():
    x, v = torch.randn(1, 4), torch.randn(1, 4)
    s, s_next, a = 0.5, 0.3, 0.8
    std_expected = s_next * math.sin(a * math.pi / 2)
    mean, std = transition("cps", v, x, s, s_next, a)
    expected = (1 - s_next) * (x - s * v) + math.sqrt(s_next**2 - std_expected**2) * (x + (1 - s) * v)
    assert torch.allclose(mean, expected, atol=1e-6)
    # cps std is 0 at the last step (s' = 0): an ODE step to x0_hat.
    mean_last, std_last = transition("cps", v, x, 0.2, 0.0, a)
    assert float(std_last.abs().max()) == 0.0
    assert torch.allclose(mean_last, x - 0.2 * v, atol=1e-6)


@pytest.mark.parametrize("kind", ["flow_sde", "cps", "ode"])
def test_zero_dt_is_identity_in_the_mean(kind):
    # dt = 0 leaves the sample where it is (cps: up to its coefficient-preserving noise scale).
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    mean, _ = transition(kind, v, x, 0.5, 0.5, 0.0 if kind == "cps" else 0.7)
    assert torch.allclose(mean, x, atol=1e-6)


def test_float32_inside_for_bf16_inputs():
    x, v = torch.randn(2, 4).bfloat16(), torch.randn(2, 4).bfloat16()
    mean, std = transition("flow_sde", v, x, 0.7, 0.5, 0.7)
    assert mean.dtype == torch.float32 and std.dtype == torch.float32
    assert gaussian_log_prob(x, mean, std).dtype == torch.float32


def test_bad_arguments_name_the_problem():
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        transition("ddim", x, x, 0.5, 0.4, 0.7)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gaussian_log_prob(x, x, torch.ones(1, 1), "max")


def test_sde_window_draw_is_seeded_and_in_range():
    draws = [draw_sde_steps(range(0, 5), 3, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(d) == 3 and len(set(d)) == 3 and all(0 <= k < 5 for k in d) for d in draws)
    assert draws[0] == draw_sde_steps(range(0, 5), 3, torch.Generator().manual_seed(0))
    assert len({tuple(d) for d in draws}) > 1


def test_trajectory_records_sde_steps_and_replays_exactly():
    _, sigmas = _sigmas(10)
    w = torch.randn(3, 3)

    def velocity(x, s):
        return torch.einsum("ij,bjhw->bihw", w, x.float()) * (1 + s.view(-1, 1, 1, 1))

    noise = torch.randn(4, 3, 2, 2)
    traj = sample_trajectory(
        velocity,
        noise,
        sigmas,
        [1, 3, 4],
        "flow_sde",
        0.7,
        sde_noise=torch.randn(4, 3, 3, 2, 2),
        storage_dtype=torch.bfloat16,
    )
    assert traj.step_indices == [1, 3, 4]
    assert traj.x.shape == (4, 3, 3, 2, 2) and traj.logp_old.shape == (4, 3) and traj.std.shape == (3,)
    assert traj.mean_old.dtype == torch.float32 and traj.x_next.dtype == torch.bfloat16
    # Replaying a stored step scores exactly what was stored (x' rounded before its log-prob).
    k = 1
    s = sigmas[3].expand(4)
    mean, std = transition("flow_sde", velocity(traj.x[:, k], s), traj.x[:, k], sigmas[3], sigmas[4], 0.7)
    assert torch.equal(gaussian_log_prob(traj.x_next[:, k], mean, std), traj.logp_old[:, k])
    # cps's last step is deterministic (std 0): a window holding only it has nothing to train, and says so.
    with pytest.raises(ValueError, match="no stochastic step"):
        sample_trajectory(velocity, noise, sigmas, [9], "cps", 0.8, sde_noise=torch.randn(4, 1, 3, 2, 2))


def test_ode_sampler_matches_diffusers_loop():
    sched, sigmas = _sigmas(10)
    noise = torch.randn(2, 3, 4, 4)

    def velocity(x, s):
        return torch.tanh(x) * s.view(-1, 1, 1, 1)

    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(velocity(x, (t / 1000).expand(2)), t, x).prev_sample
    assert torch.allclose(sample_ode(velocity, noise, sigmas), x, atol=1e-5)
