"""The paper's other losses against independent computations (spec §9-11): dppo mask variants, GRPO-Guard,
Diffusion-NFT and its old-weights update. References are float64 loops over the spec's formulas, not the code."""

import itertools
import math

import pytest
import torch

from trainer.divergence import gaussian_kl
from trainer.losses import DPPO_MASKS, dppo_loss, grpo_guard_loss, nft_loss
from trainer.old_weights import nft_old_decay, pull_toward
from trainer.sampling import gaussian_log_prob

DELTA = 1e-5


def _dropped(variant: str, a: float, log_r: float, d: float, delta: float = DELTA) -> bool:
    """Spec §9 in plain floats: the drop rule of each variant, written as the spec's products."""
    if not d > delta:
        return False
    if variant == "asymmetric":
        return a * (math.exp(log_r) - 1) > 0
    if variant == "symmetric":
        return True
    return a * (log_r - d) > 0  # first_order


# --- dppo mask variants (spec §9) ---


@pytest.mark.parametrize(
    "variant, adv, log_r, kl_above_delta",
    list(itertools.product(DPPO_MASKS, [1.0, -1.0, 0.0], [0.01, -0.01], [True, False])),
)
def test_dppo_mask_variants_truth_table(variant, adv, log_r, kl_above_delta):
    # Every sign/threshold case: A > 0 / < 0 / = 0, r > 1 / < 1, D above / below delta, for each variant.
    d = 10 * DELTA if kl_above_delta else 0.1 * DELTA
    logp_old = torch.zeros(1, 1)
    logp_new = torch.full((1, 1), log_r, requires_grad=True)
    loss, stats = dppo_loss(logp_new, logp_old, torch.tensor([adv]), torch.full((1, 1), d), DELTA, mask=variant)
    loss.backward()
    dropped = _dropped(variant, adv, log_r, d)
    assert float(stats["mask/fraction"]) == float(dropped)
    assert float(stats["mask/pos_fraction"]) == float(dropped and adv > 0)
    assert float(stats["mask/neg_fraction"]) == float(dropped and adv < 0)
    r = math.exp(log_r)
    expected = 0.0 if dropped else -adv * r  # a dropped term is an exact zero with no gradient
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=0.0)
    assert logp_new.grad.item() == pytest.approx(expected, rel=1e-5, abs=0.0)  # d(-A·r)/d log r = -A·r


@pytest.mark.parametrize("adv", [1.0, -1.0])
@pytest.mark.parametrize("side", [+1, -1])
def test_first_order_mask_at_log_r_just_above_and_below_d(adv, side):
    # D = 1e-3 > delta and r > 1 in both cases: only the sign of log r - D decides (Appendix E). asymmetric would
    # drop both cases for A > 0 and neither for A < 0; first_order drops log r > D for A > 0, log r < D for A < 0.
    d = 1e-3
    log_r = torch.tensor([[d * (1 + side * 1e-3)]])  # 1e-6 away from D: far above float32 spacing (~1e-10)
    assert (log_r.item() > d) == (side > 0) and log_r.item() > 0
    kl = torch.tensor([[d]])
    _, first = dppo_loss(
        log_r.clone().requires_grad_(), torch.zeros(1, 1), torch.tensor([adv]), kl, DELTA, "first_order"
    )
    _, asym = dppo_loss(
        log_r.clone().requires_grad_(), torch.zeros(1, 1), torch.tensor([adv]), kl, DELTA, "asymmetric"
    )
    assert float(first["mask/fraction"]) == float(adv * side > 0)
    assert float(first["mask/fraction"]) == float(_dropped("first_order", adv, log_r.item(), kl.item()))
    assert float(asym["mask/fraction"]) == float(adv > 0)


@pytest.mark.parametrize("variant", DPPO_MASKS)
def test_dppo_variants_on_random_inputs_against_an_elementwise_loop(variant):
    # Random (B, S) with A of both signs and zeros, r on both sides of 1, D on both sides of delta (and log r ~ D).
    gen = torch.Generator().manual_seed(3)
    B, S = 48, 3
    logp_old = torch.randn(B, S, generator=gen)
    log_r = torch.randn(B, S, generator=gen) * 3e-5
    logp_new = (logp_old + log_r).requires_grad_()
    kl = torch.rand(B, S, generator=gen) * 4e-5  # D in [0, 4e-5]: a quarter below delta, |log r| and D overlap
    adv = torch.randn(B, generator=gen)
    adv[::7] = 0.0
    loss, stats = dppo_loss(logp_new, logp_old, adv, kl, DELTA, mask=variant)
    loss.backward()
    actual_log_r = (logp_new.detach() - logp_old).double()  # the float32 log r the loss sees
    total, n_drop, n_pos, n_neg = 0.0, 0, 0, 0
    grad = torch.zeros(B, S, dtype=torch.float64)
    for i, t in itertools.product(range(B), range(S)):
        a, lr, d = adv[i].item(), actual_log_r[i, t].item(), kl[i, t].item()
        if _dropped(variant, a, lr, d):
            n_drop, n_pos, n_neg = n_drop + 1, n_pos + (a > 0), n_neg + (a < 0)
        else:
            total += -a * math.exp(lr)
            grad[i, t] = -a * math.exp(lr) / (B * S)
    assert 0 < n_drop < B * S or variant == "symmetric"
    assert loss.item() == pytest.approx(total / (B * S), rel=1e-5)
    assert float(stats["mask/fraction"]) == pytest.approx(n_drop / (B * S))
    assert float(stats["mask/pos_fraction"]) == pytest.approx(n_pos / (B * S))
    assert float(stats["mask/neg_fraction"]) == pytest.approx(n_neg / (B * S))
    torch.testing.assert_close(logp_new.grad.double(), grad, rtol=1e-5, atol=1e-12)
    assert (logp_new.grad[grad == 0] == 0).all()  # masked terms carry exactly zero gradient


def _dppo_loss_before_issue_12(logp_new, logp_old, advantages, kl, delta):
    """trainer.losses.dppo_loss as of commit 0ab66af (before the mask variants), frozen as the regression oracle."""
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logp_new - logp_old)
    kl_old = kl.detach()
    moving_away = ((adv > 0) & (ratio > 1)) | ((adv < 0) & (ratio < 1))
    mask = ~((kl_old > delta) & moving_away)
    loss = (-adv * ratio * mask).mean()
    log_ratio = (logp_new - logp_old).detach()
    blocked = (~mask).float()
    stats = {
        "ratio/mean": ratio.detach().mean().item(),
        "ratio/min": ratio.detach().min().item(),
        "ratio/max": ratio.detach().max().item(),
        "approx_kl": (0.5 * log_ratio**2).mean().item(),
        "mask/fraction": blocked.mean().item(),
        "mask/pos_fraction": (blocked * (adv > 0)).mean().item(),
        "mask/neg_fraction": (blocked * (adv < 0)).mean().item(),
    }
    return loss, stats


def test_asymmetric_is_todays_dppo_loss_bit_for_bit():
    gen = torch.Generator().manual_seed(5)
    logp_old = torch.randn(32, 4, generator=gen)
    delta_logp = torch.randn(32, 4, generator=gen) * 1e-4
    kl = torch.rand(32, 4, generator=gen) * 2e-5
    adv = torch.randn(32, generator=gen)
    adv[::5] = 0.0
    results = []
    for call in (
        lambda lp: _dppo_loss_before_issue_12(lp, logp_old, adv, kl, DELTA),
        lambda lp: dppo_loss(lp, logp_old, adv, kl, DELTA),
        lambda lp: dppo_loss(lp, logp_old, adv, kl, DELTA, mask="asymmetric"),
    ):
        logp_new = (logp_old + delta_logp).requires_grad_()
        loss, stats = call(logp_new)
        loss.backward()
        results.append((loss.detach(), logp_new.grad, {k: float(v) for k, v in stats.items()}))
    (ref_loss, ref_grad, ref_stats), *new = results
    for loss, grad, stats in new:
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
        assert stats == ref_stats


def test_dppo_bad_mask_names_argument_value_and_choices():
    with pytest.raises(ValueError, match=r"mask.*asymmetric.*symmetric.*first_order.*'one_sided'"):
        dppo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.zeros(1, 1), DELTA, mask="one_sided")


# --- GRPO-Guard (spec §10) ---


def _guard_setup(seed=0, B=4, S=3, shape=(3, 4, 4), scale=1e-2):
    """x' = mu_old + std·z per (sample, step); logp and D from the project's own Gaussian helpers (mean reduction)."""
    gen = torch.Generator().manual_seed(seed)
    std = torch.tensor([0.3, 0.5, 0.8])[:S]  # (S,)
    dt = torch.tensor([-0.05, -0.1, -0.2])[:S]  # (S,) sigma_{t+1} - sigma_t
    mu_old = torch.randn(B, S, *shape, generator=gen)
    z = torch.randn(B, S, *shape, generator=gen)
    d_mu = torch.randn(B, S, *shape, generator=gen) * scale
    mu_theta = (mu_old + d_mu).requires_grad_()
    std_b = std.view(1, S, *([1] * len(shape)))
    x_next = mu_old + std_b * z
    return dict(std=std, dt=dt, mu_old=mu_old, z=z, mu_theta=mu_theta, std_b=std_b, x_next=x_next, B=B, S=S)


def _guard_inputs(g):
    """logp_new, logp_old, D of shape (B, S); D keeps its gradient (spec §10)."""

    def flat(t):  # (B, S, C, H, W) -> (B·S, C, H, W)
        return t.flatten(0, 1)

    std = flat(g["std_b"].expand(g["B"], -1, 1, 1, 1))
    logp_new = gaussian_log_prob(flat(g["x_next"]), flat(g["mu_theta"]), std, "mean").view(g["B"], g["S"])
    logp_old = gaussian_log_prob(flat(g["x_next"]), flat(g["mu_old"]), std, "mean").view(g["B"], g["S"])
    kl = gaussian_kl(flat(g["mu_old"]), flat(g["mu_theta"]), std, "mean").view(g["B"], g["S"])
    return logp_new, logp_old, kl


def test_grpo_guard_normalised_ratio_is_exp_mean_z_dot_dmu():
    # Mean reduction over N latent dims, x' = mu_old + std·z, d = mu_theta - mu_old:
    #   logp_theta - logp_old = mean[-(std·z - d)² + (std·z)²] / (2·std²) = mean(z·d)/std - mean(d²)/(2·std²)
    #                         = mean(z·d)/std - D          (D = gaussian_kl with mean reduction)
    # so std·(log r + D) = mean(z·d) exactly: spec §10's formula and the identity agree, with no extra factor.
    # (Under sum reduction the same algebra gives std·(log r + D) = sum(z·d) = N·mean(z·d).)
    g = _guard_setup()
    logp_new, logp_old, kl = _guard_inputs(g)
    expected = torch.exp((g["z"].double() * (g["mu_theta"] - g["mu_old"]).detach().double()).mean(dim=(2, 3, 4)))
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    _, stats = grpo_guard_loss(logp_new, logp_old, adv, kl, g["std"], g["dt"], 2e-6)
    assert float(stats["ratio/mean"]) == pytest.approx(expected.mean().item(), abs=1e-6)
    assert float(stats["ratio/min"]) == pytest.approx(expected.min().item(), abs=1e-6)
    assert float(stats["ratio/max"]) == pytest.approx(expected.max().item(), abs=1e-6)
    assert float(stats["approx_kl"]) == pytest.approx((0.5 * expected.log() ** 2).mean().item(), rel=1e-3)
    for i, t in itertools.product(range(g["B"]), range(g["S"])):  # each element alone: ratio/mean is its r~
        one = (
            logp_new[i : i + 1, t : t + 1],
            logp_old[i : i + 1, t : t + 1],
            adv[i : i + 1],
            kl[i : i + 1, t : t + 1],
        )
        _, s1 = grpo_guard_loss(*one, g["std"][t : t + 1], g["dt"][t : t + 1], 2e-6)
        assert float(s1["ratio/mean"]) == pytest.approx(expected[i, t].item(), abs=1e-6)


def _guard_reference(logp_new, logp_old, kl, adv, std, dt, eps, reweight):
    """Spec §10 term by term in float64 Python: (loss, clip fraction)."""
    B, S = logp_new.shape
    total, clipped = 0.0, 0
    for i, t in itertools.product(range(B), range(S)):
        log_rt = std[t].item() * (logp_new[i, t].item() - logp_old[i, t].item() + kl[i, t].item())
        rt, a = math.exp(log_rt), adv[i].item()
        w = 1.0 / -dt[t].item() if reweight else 1.0
        total += w * max(-a * rt, -a * min(max(rt, 1 - eps), 1 + eps))
        clipped += abs(rt - 1) > eps
    return total / (B * S), clipped / (B * S)


@pytest.mark.parametrize("reweight", [True, False])
def test_grpo_guard_loss_value_weights_and_clip_fraction(reweight):
    g = _guard_setup(seed=1, B=6, scale=2e-2)
    logp_new, logp_old, kl = _guard_inputs(g)
    adv = torch.tensor([1.5, -1.0, 0.3, -0.7, 2.0, 0.0])
    eps = 3e-3  # |log r~| ~ 3e-3 here: some terms inside the trust region, some outside on either side
    loss, stats = grpo_guard_loss(logp_new, logp_old, adv, kl, g["std"], g["dt"], eps, reweight=reweight)
    ref_loss, ref_clip = _guard_reference(logp_new, logp_old, kl, adv, g["std"], g["dt"], eps, reweight)
    assert 0 < ref_clip < 1
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert float(stats["clip/fraction"]) == pytest.approx(ref_clip)


def test_grpo_guard_uniform_dt_reweight_is_a_constant_factor():
    g = _guard_setup(seed=2)
    logp_new, logp_old, kl = _guard_inputs(g)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    dt = torch.full((3,), -0.25)
    weighted, _ = grpo_guard_loss(logp_new, logp_old, adv, kl, g["std"], dt, 1e-2, reweight=True)
    plain, _ = grpo_guard_loss(logp_new, logp_old, adv, kl, g["std"], dt, 1e-2, reweight=False)
    assert weighted.item() == pytest.approx(4.0 * plain.item(), rel=1e-6)


@pytest.mark.parametrize("reweight", [True, False])
def test_grpo_guard_gradient_wrt_mu_theta_is_the_direct_formula(reweight):
    # log r~ = mean(z·d): d log r~ / d mu_theta = z / N — true only if D keeps its gradient (spec §10); without it
    # the gradient would be (z - d/std)/N. A term's gradient is w_t·(-A)·r~·z/N/(B·S) unless its clipped branch
    # is the max (A > 0, r~ > 1+eps or A < 0, r~ < 1-eps), where it is 0.
    g = _guard_setup(seed=4, scale=2e-2)
    logp_new, logp_old, kl = _guard_inputs(g)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0])
    eps = 3e-3
    loss, _ = grpo_guard_loss(logp_new, logp_old, adv, kl, g["std"], g["dt"], eps, reweight=reweight)
    loss.backward()
    B, S = g["B"], g["S"]
    z, d_mu = g["z"].double(), (g["mu_theta"] - g["mu_old"]).detach().double()
    n_dims = z[0, 0].numel()
    expected = torch.zeros_like(z)
    n_flow = 0
    for i, t in itertools.product(range(B), range(S)):
        rt = torch.exp((z[i, t] * d_mu[i, t]).mean()).item()
        a = adv[i].item()
        if (a > 0 and rt > 1 + eps) or (a < 0 and rt < 1 - eps):
            continue
        n_flow += 1
        w = 1.0 / -g["dt"][t].item() if reweight else 1.0
        expected[i, t] = w * (-a) * rt * z[i, t] / n_dims / (B * S)
    assert 0 < n_flow < B * S
    torch.testing.assert_close(g["mu_theta"].grad.double(), expected, rtol=1e-3, atol=1e-7)


def test_grpo_guard_self_test_ratio_is_one_at_the_old_policy():
    g = _guard_setup(seed=6, scale=0.0)  # mu_theta == mu_old: the first step after a rollout
    logp_new, logp_old, kl = _guard_inputs(g)
    _, stats = grpo_guard_loss(logp_new, logp_old, torch.ones(4), kl, g["std"], g["dt"], 2e-6)
    assert float(stats["ratio/min"]) == 1.0 == float(stats["ratio/max"]) and float(stats["clip/fraction"]) == 0.0


# --- Diffusion-NFT (spec §11) ---


def _nft_reference(v, v_old, x_s, x0, s, adv, beta, c):
    """Spec §11 per sample in float64, with the gradient dL/dv written out by hand: (loss, grad, r, w+, w-)."""
    v, v_old, x_s, x0 = (t.detach().double() for t in (v, v_old, x_s, x0))
    B = v.shape[0]
    total, grad, rs, wps, wns = 0.0, torch.zeros_like(v), [], [], []
    for i in range(B):
        si, n = s[i].item(), v[i].numel()
        e_pos = x_s[i] - si * (beta * v[i] + (1 - beta) * v_old[i]) - x0[i]  # x0+ - x0
        e_neg = x_s[i] - si * ((1 + beta) * v_old[i] - beta * v[i]) - x0[i]  # x0- - x0
        w_pos, w_neg = max(e_pos.abs().mean().item(), 1e-5), max(e_neg.abs().mean().item(), 1e-5)
        l_pos, l_neg = (e_pos**2).mean().item() / w_pos, (e_neg**2).mean().item() / w_neg
        r = min(max(0.5 + 0.5 * min(max(adv[i].item(), -c), c) / c, 0.0), 1.0)
        total += r * l_pos + (1 - r) * l_neg
        # d e_pos/dv = -s·beta, d e_neg/dv = +s·beta; w± are constants (stop-grad)
        g_pos, g_neg = 2 * e_pos * (-si * beta) / n / w_pos, 2 * e_neg * (si * beta) / n / w_neg
        grad[i] = c / beta / B * (r * g_pos + (1 - r) * g_neg)
        rs.append(r), wps.append(w_pos), wns.append(w_neg)
    return c * total / B / beta, grad, rs, wps, wns


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 3, 4, 4)], ids=["image-4d", "video-5d"])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_nft_loss_value_and_gradient_against_the_formula(shape, beta):
    gen = torch.Generator().manual_seed(7)
    B = 5
    x0 = torch.randn(B, *shape, generator=gen)
    eps = torch.randn(B, *shape, generator=gen)
    s = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1])
    s_b = s.view(B, *([1] * len(shape)))
    x_s = (1 - s_b) * x0 + s_b * eps
    v_old = eps - x0 + 0.3 * torch.randn(B, *shape, generator=gen)  # an imperfect old policy
    v = (v_old + 0.05 * torch.randn(B, *shape, generator=gen)).requires_grad_()
    adv = torch.tensor([7.0, 2.0, 0.0, -1.0, -6.0])
    loss, stats = nft_loss(v, v_old, x_s, x0, s, adv, beta)
    loss.backward()
    ref, grad, rs, wps, wns = _nft_reference(v, v_old, x_s, x0, s, adv, beta, 5.0)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    torch.testing.assert_close(v.grad.double(), grad, rtol=1e-4, atol=1e-7)  # float32 cancellation in x0± - x0
    assert float(stats["nft/r_mean"]) == pytest.approx(sum(rs) / B)
    assert float(stats["nft/w_pos_mean"]) == pytest.approx(sum(wps) / B, rel=1e-5)
    assert float(stats["nft/w_neg_mean"]) == pytest.approx(sum(wns) / B, rel=1e-5)
    assert v_old.grad is None


@pytest.mark.parametrize(
    "adv, adv_clip, r",
    [(-10.0, 5.0, 0.0), (-5.0, 5.0, 0.0), (-2.5, 5.0, 0.25), (0.0, 5.0, 0.5), (2.5, 5.0, 0.75), (5.0, 5.0, 1.0),
     (1e6, 5.0, 1.0), (1.0, 2.0, 0.75), (-3.0, 2.0, 0.0)],
)  # fmt: skip
def test_nft_advantage_to_optimality_probability(adv, adv_clip, r):
    # r = clip(0.5 + 0.5·clip(A, -c, c)/c, 0, 1): A = -c -> 0, A = 0 -> 1/2, A = c -> 1, beyond the edges held.
    x = torch.randn(1, 3, 2, 2)
    _, stats = nft_loss(x.clone().requires_grad_(), x, x, x, torch.tensor([0.5]), torch.tensor([adv]), 1.0, adv_clip)
    assert float(stats["nft/r_mean"]) == pytest.approx(r)


def test_nft_r_weights_the_positive_and_negative_losses():
    # r = 1 trains only toward x0+ (l+), r = 0 only toward x0- (l-): check against the loss of each branch alone.
    gen = torch.Generator().manual_seed(8)
    x0, x_s, v_old, v = (torch.randn(2, 3, 4, 4, generator=gen) for _ in range(4))
    s = torch.tensor([0.6, 0.4])
    pos = nft_loss(v, v_old, x_s, x0, s, torch.tensor([5.0, 5.0]), 1.0)[0].item()
    neg = nft_loss(v, v_old, x_s, x0, s, torch.tensor([-5.0, -5.0]), 1.0)[0].item()
    half = nft_loss(v, v_old, x_s, x0, s, torch.tensor([0.0, 0.0]), 1.0)[0].item()
    ref_pos = _nft_reference(v, v_old, x_s, x0, s, torch.tensor([5.0, 5.0]), 1.0, 5.0)[0]
    assert pos == pytest.approx(ref_pos, rel=1e-5) and half == pytest.approx((pos + neg) / 2, rel=1e-5)
    assert pos != pytest.approx(neg, rel=1e-3)


def test_nft_weight_floor():
    # Sample 0: |x0± - x0| = 1e-7 everywhere, so w± = 1e-7 is floored to 1e-5 and l± = 1e-14/1e-5 = 1e-9.
    # Sample 1: errors of order 1, no floor. v = v_old = 0 and x0 = 0 make x0± - x0 = x_s exactly.
    err = torch.full((1, 2, 3, 3), 1e-7) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    big = torch.linspace(-1.0, 1.0, 18).view(1, 2, 3, 3)
    x_s = torch.cat([err, big])
    v = torch.zeros(2, 2, 3, 3, requires_grad=True)
    adv = torch.tensor([2.5, -2.5])  # r = 0.75, 0.25
    loss, stats = nft_loss(
        v, torch.zeros(2, 2, 3, 3), x_s, torch.zeros(2, 2, 3, 3), torch.tensor([1.0, 1.0]), adv, 1.0
    )
    loss.backward()
    w_big = big.double().abs().mean().item()
    assert float(stats["nft/w_pos_mean"]) == pytest.approx((1e-5 + w_big) / 2, rel=1e-6)
    l_small = 1e-14 / 1e-5  # the same for both branches: r weights sum to 1
    l_big = (big.double() ** 2).mean().item() / w_big
    assert loss.item() == pytest.approx(5.0 * (l_small + l_big) / 2, rel=1e-5)
    ref_loss, grad, *_ = _nft_reference(v, torch.zeros_like(v), x_s, torch.zeros_like(v), torch.ones(2), adv, 1.0, 5.0)
    assert ref_loss == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(v.grad.double(), grad, rtol=1e-4, atol=1e-12)  # the floored w in the gradient too


# --- Diffusion-NFT old weights (spec §11) ---


@pytest.mark.parametrize(
    "k, d", [(0, 0.0), (1, 0.001), (10, 0.01), (250, 0.25), (499, 0.499), (500, 0.5), (501, 0.5), (10**6, 0.5)]
)
def test_nft_old_decay_schedule(k, d):
    assert nft_old_decay(k) == pytest.approx(d, abs=1e-12)


def test_nft_old_decay_refuses_negative_steps():
    with pytest.raises(ValueError, match="step"):
        nft_old_decay(-1)


def test_pull_toward_matches_the_update_rule_over_a_run():
    # theta_old starts equal to theta; after each rollout's updates (k optimizer steps so far):
    # theta_old <- d_k·theta_old + (1 - d_k)·theta, d_k = min(0.001·k, 0.5). Reference: float64, by hand.
    gen = torch.Generator().manual_seed(9)
    theta = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    old = [p.clone() for p in theta]
    ref = [p.double().clone() for p in theta]
    steps_per_rollout = 200
    for rollout in range(1, 5):
        for p in theta:  # stand-in for the rollout's optimizer steps
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        k = rollout * steps_per_rollout
        d = min(0.001 * k, 0.5)
        ref = [d * r + (1 - d) * p.double() for r, p in zip(ref, theta, strict=True)]
        pull_toward(old, theta, nft_old_decay(k))
        for o, r in zip(old, ref, strict=True):
            torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-6)
    assert nft_old_decay(4 * steps_per_rollout) == 0.5


def test_pull_toward_edges_and_errors():
    new = [torch.randn(3, 2, requires_grad=True)]
    old = [torch.randn(3, 2)]
    pull_toward(old, new, 0.0)  # d = 0: an exact copy (and no autograd graph on the old copy)
    assert torch.equal(old[0], new[0].detach()) and not old[0].requires_grad
    before = old[0].clone()
    pull_toward(old, [torch.zeros(3, 2)], 1.0)  # d = 1: unchanged
    assert torch.equal(old[0], before)
    with pytest.raises(ValueError, match="pair"):
        pull_toward(old, [], 0.5)
    with pytest.raises(ValueError, match="shape"):
        pull_toward(old, [torch.zeros(2, 3)], 0.5)
    with pytest.raises(ValueError, match="decay"):
        pull_toward(old, new, 1.5)
