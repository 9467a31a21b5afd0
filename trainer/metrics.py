"""The metric names reported every step (spec §7); names are part of the API (REST, dashboard, metrics.jsonl)."""

from __future__ import annotations

import math

# key -> meaning. `<name>` stands for each configured reward (monitors with weight 0 included).
METRICS: dict[str, str] = {
    "reward/<name>/mean": "Mean of one reward over the rollout batch.",
    "reward/<name>/std": "Std of one reward over the rollout batch.",
    "reward/total/mean": "Mean of the weighted sum of the trained rewards.",
    "adv/abs_mean": "Mean |advantage| (spec §5).",
    "zero_std_fraction": "Share of samples whose whole group had zero reward spread (advantage 0).",
    "ratio/mean": "Mean importance ratio r = exp(logp_theta - logp_old) over trained (sample, step) pairs "
    "(grpo_guard: its normalised ratio r~, spec §10).",
    "ratio/min": "Smallest ratio in the step.",
    "ratio/max": "Largest ratio in the step.",
    "approx_kl": "Mean ½·(log r)².",
    "kl_old/mean": "Mean exact KL D between pi_old and pi_theta (spec §3), before each update.",
    "kl_old/max": "Largest D in the step.",
    "kl_old/p50": "Median D: with p90, calibrates delta.",
    "kl_old/p90": "90th percentile of D.",
    "kl_ref/mean": "Mean exact KL between the policy and the frozen base pi_ref (drift from the base model); nft: of "
    "the flow_sde transitions from its noised states in the SDE window, built from v and v_ref (spec §11).",
    "mask/fraction": "dppo: share of (sample, step) terms masked by the divergence mask.",
    "mask/pos_fraction": "dppo: masked share among positive-advantage terms, over all terms.",
    "mask/neg_fraction": "dppo: masked share among negative-advantage terms, over all terms.",
    "clip/fraction": "clip, grpo_guard: share of terms whose ratio (grpo_guard: r~) left [1-eps, 1+eps].",
    "nft/r_mean": "nft: mean optimality probability r = clip(0.5 + 0.5·clip(A, -5, 5)/5, 0, 1) (spec §11).",
    "nft/w_pos_mean": "nft: mean adaptive weight w+ = mean |x0+ - x0| of the implicit positive policy.",
    "nft/w_neg_mean": "nft: mean adaptive weight w- = mean |x0- - x0| of the implicit negative policy.",
    "loss/policy": "Policy loss (spec §4; nft: the flow-matching loss of §11).",
    "loss/total": "Policy loss + beta·KL-to-reference (nft: + beta·mean (v - v_ref)²).",
    "grad_norm": "Gradient norm before clipping, mean over the step's optimizer steps.",
    "lr": "Learning rate.",
    "selftest/ratio_dev": "max |r - 1| on the first optimizer step after a rollout (must be ~0; spec §4).",
    "selftest/kl_dev": "max D on that same step (must be ~0).",
    "time/rollout_s": "Seconds spent sampling the rollout.",
    "time/reward_s": "Seconds spent scoring it.",
    "time/train_s": "Seconds spent in the inner epochs.",
    "throughput/images_per_s": "Rollout images per second of the whole step.",
    "eval/reward/<name>/mean": "Held-out prompts, ODE sampler: mean of one reward.",
    "eval/reward/total/mean": "Held-out prompts, ODE sampler: weighted total.",
}

# Keys that measure wall time and so differ between otherwise identical runs.
TIMING_PREFIXES = ("time/", "throughput/")

# A step whose value of one of these is NaN or infinite has diverged: its update is garbage, and so is every later one.
MUST_BE_FINITE = ("loss/total", "grad_norm")


def check_finite(step: int, metrics: dict[str, float], keys: tuple[str, ...] = MUST_BE_FINITE) -> None:
    """Raise FloatingPointError naming the step and the metric when one of `keys` is not a finite number."""
    bad = {key: metrics[key] for key in keys if key in metrics and not math.isfinite(metrics[key])}
    if bad:
        values = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise FloatingPointError(
            f"step {step}: {values}: training diverged (try a lower learning_rate or beta; check the rewards)"
        )
