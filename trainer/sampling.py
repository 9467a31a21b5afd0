"""Per-step Gaussian policies of a flow-matching sampler and whole trajectories with an SDE window (spec §1-2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

REDUCTIONS = ("mean", "sum")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _flow_sde(v, x, s, s_next, noise_level, sigma_max):
    """Flow-GRPO's SDE: g = a·sqrt(s / (1 - s~)), s~ = sigma_max if s == 1 else s;
    mean = x + dt·[v + g²/(2s)·(x + (1-s)·v)],  std = g·sqrt(-dt)  (spec §2)."""
    dt = s_next - s
    if sigma_max is None and bool((s >= 1).any()):
        raise ValueError("flow_sde at sigma == 1 needs sigma_max (the schedule's second sigma) to avoid 1/(1-s) = inf")
    s_tilde = torch.where(s >= 1, _per_sample(sigma_max if sigma_max is not None else 0.0, x), s)
    g = noise_level * torch.sqrt(s / (1 - s_tilde))
    mean = x + dt * (v + g**2 / (2 * s) * (x + (1 - s) * v))
    std = g * torch.sqrt(-dt)
    return mean, std


def _cps(v, x, s, s_next, noise_level, sigma_max):
    """Coefficients-preserving sampling: std = s'·sin(a·pi/2); x0 = x - s·v, x1 = x + (1-s)·v;
    mean = (1-s')·x0 + sqrt(s'² - std²)·x1  (spec §2; std = 0 at the last step: an ODE step)."""
    std = s_next * math.sin(noise_level * math.pi / 2)
    x0_hat = x - s * v
    x1_hat = x + (1 - s) * v
    # clamp: s'² - std² >= 0 analytically; rounding must not produce a NaN.
    mean = (1 - s_next) * x0_hat + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * x1_hat
    return mean, std


def _ode(v, x, s, s_next, noise_level, sigma_max):
    """The Euler step: mean = x + v·dt, std = 0 (spec §1)."""
    return x + v * (s_next - s), torch.zeros_like(s)


@dataclass(frozen=True)
class TransitionSpec:
    """One per-step policy: its formula (fn(v, x, s, s', a, sigma_max) -> (mean, std), all float32 with s and s'
    shaped (B, 1, ..., 1)) and its default noise level a (spec §6), None for the deterministic ODE step."""

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    default_noise_level: float | None


TRANSITIONS: dict[str, TransitionSpec] = {
    "flow_sde": TransitionSpec(_flow_sde, default_noise_level=0.7),
    "cps": TransitionSpec(_cps, default_noise_level=0.8),
    "ode": TransitionSpec(_ode, default_noise_level=None),
}
TRANSITION_KINDS = tuple(TRANSITIONS)
SDE_KINDS = tuple(kind for kind, spec in TRANSITIONS.items() if spec.default_noise_level is not None)


def transition(
    kind: str,
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    sigma_max: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Gaussian policy pi(x' | x) for one step s -> s' (spec §2).

    With dt = s' - s (< 0) and a = noise_level:
    - ``flow_sde`` (Flow-GRPO): g = a·sqrt(s / (1 - s~)), s~ = sigma_max if s == 1 else s;
      mean = x + dt·[v + g²/(2s)·(x + (1-s)·v)],  std = g·sqrt(-dt).
    - ``cps`` (coefficients-preserving): std = s'·sin(a·pi/2); x0 = x - s·v, x1 = x + (1-s)·v;
      mean = (1-s')·x0 + sqrt(s'² - std²)·x1.  (std = 0 at the last step: an ODE step.)
    - ``ode``: mean = x + v·dt, std = 0.

    Args:
        kind: one of `TRANSITION_KINDS` ("flow_sde", "cps", "ode").
        velocity: v_theta(x, s) (B, ...).
        sample: x (B, ...).
        sigma, sigma_next: s and s', scalars or (B,) tensors.
        noise_level: a.
        sigma_max: s~ used by flow_sde when s == 1 (the schedule's second sigma); required then.

    Returns:
        (mean, std): mean (B, ...) float32, std float32 broadcastable to the sample ((B, 1, ..., 1)).
    """
    if kind not in TRANSITIONS:
        raise ValueError(f"kind must be one of {TRANSITION_KINDS}, got {kind!r}")
    # All transition math in float32, even when the network runs in bf16/fp16 (spec §2).
    x = sample.float()
    return TRANSITIONS[kind].fn(
        velocity.float(), x, _per_sample(sigma, x), _per_sample(sigma_next, x), noise_level, sigma_max
    )


def reduce_latent(per_elem: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) per-element terms reduced over the latent dims to (B,): "mean" (default) or "sum" (spec §2-3)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dims = tuple(range(1, per_elem.ndim))
    return per_elem.mean(dim=dims) if reduction == "mean" else per_elem.sum(dim=dims)


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean"):
    """log N(x' | mean, std²·I), per element -(x'-mean)²/(2std²) - log std - log sqrt(2pi), reduced (spec §2).

    Args:
        x_next, mean: (B, ...). std: broadcastable to them, > 0.
        reduction: "mean" over latent dims (default; what public implementations do) or "sum" (the true density).

    Returns:
        (B,) float32.
    """
    x_next, mean, std = x_next.float(), mean.float(), std.float()
    per_elem = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return reduce_latent(per_elem, reduction)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as float32 (B, 1, ..., 1) broadcastable against `like`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def draw_sde_steps(window: range, num_sde_steps: int, generator: torch.Generator) -> list[int]:
    """Stochastic step indices drawn without replacement from `window`, sorted (spec §1)."""
    if num_sde_steps >= len(window):
        return list(window)
    picks = torch.randperm(len(window), generator=generator)[:num_sde_steps]
    return sorted(window[i] for i in picks.tolist())


@dataclass
class Trajectory:
    """What a rollout stores per SDE step (spec §6), batch-first; S = number of SDE steps."""

    x: torch.Tensor  # (B, S, C, H, W) states before each SDE step (storage dtype)
    x_next: torch.Tensor  # (B, S, C, H, W) sampled actions, rounded through the storage dtype
    logp_old: torch.Tensor  # (B, S) float32
    mean_old: torch.Tensor  # (B, S, C, H, W) float32: never bf16 (spec §3)
    std: torch.Tensor  # (S,) float32, shared by old and new policy
    step_indices: list[int]  # the S schedule indices that were stochastic
    final: torch.Tensor  # (B, C, H, W) the clean sample x at s = 0
    mean_ref: torch.Tensor | None = None  # (B, S, C, H, W) float32 reference-policy means, when asked for


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,...), sigma (B,)) -> v float32


@torch.no_grad()
def sample_trajectory(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sde_steps: list[int],
    kind: str,
    noise_level: float,
    sde_noise: torch.Tensor,
    storage_dtype: torch.dtype = torch.float32,
    logprob_reduction: str = "mean",
    reference_velocity_fn: VelocityFn | None = None,
) -> Trajectory:
    """Run the sampler from pure noise (s = 1) to s = 0: Euler ODE steps, Gaussian SDE steps at `sde_steps`.

    Args:
        velocity_fn: the policy's velocity v(x, s).
        noise: (B, C, H, W) initial noise x at s = 1.
        sigmas: (T+1,) schedule from diffusers' scheduler, sigmas[0] = 1, sigmas[T] = 0.
        sde_steps: stochastic step indices k (transition sigmas[k] -> sigmas[k+1]).
        kind: SDE policy at those steps ("flow_sde" or "cps").
        sde_noise: (B, len(sde_steps), C, H, W) the z of each SDE step; drawn by the caller so that a batch split
            into chunks samples exactly what the whole batch would.
        storage_dtype: x' is rounded through it before its log-prob, so replay scores exactly what is stored.
        reference_velocity_fn: when given, also record pi_ref's mean at each SDE step (for KL-to-reference); it may
            return fewer rows than it is given, the reference means then cover that leading subset of the batch.

    Returns:
        A Trajectory.
    """
    num_steps = len(sigmas) - 1
    if any(not 0 <= k < num_steps for k in sde_steps):
        raise ValueError(f"sde_steps {sde_steps} out of range for a {num_steps}-step schedule")
    sde_set = set(sde_steps)
    if sde_noise.shape[:2] != (noise.shape[0], len(sde_steps)):
        raise ValueError(
            f"sde_noise must be (B, len(sde_steps), ...) = {(noise.shape[0], len(sde_steps))}, "
            f"got {tuple(sde_noise.shape[:2])}"
        )
    sde_order = {k: j for j, k in enumerate(sorted(sde_set))}
    batch = noise.shape[0]
    x = noise.to(storage_dtype)
    xs, x_nexts, logps, means, stds, means_ref, recorded = [], [], [], [], [], [], []
    for k in range(num_steps):
        sigma = sigmas[k].expand(batch).to(noise.device)
        v = velocity_fn(x, sigma)
        step_kind = kind if k in sde_set else "ode"
        mean, std = transition(step_kind, v, x, sigmas[k], sigmas[k + 1], noise_level, sigma_max=sigmas[1])
        if step_kind == "ode" or float(std.max()) == 0.0:
            # Deterministic: ODE steps, and cps's last step whose std is 0 (spec §2): nothing to train there.
            x = mean.to(storage_dtype)
            continue
        z = sde_noise[:, sde_order[k]].to(mean.device, torch.float32)
        x_next = (mean + std * z).to(storage_dtype)  # round through storage dtype *before* the log-prob
        xs.append(x)
        x_nexts.append(x_next)
        logps.append(gaussian_log_prob(x_next, mean, std, logprob_reduction))
        means.append(mean)
        stds.append(std.flatten()[0])
        recorded.append(k)
        if reference_velocity_fn is not None:
            v_ref = reference_velocity_fn(x, sigma)
            x_ref = x[: v_ref.shape[0]]
            means_ref.append(transition(kind, v_ref, x_ref, sigmas[k], sigmas[k + 1], noise_level, sigmas[1])[0])
        x = x_next
    if not xs:
        raise ValueError(f"no stochastic step among sde_steps={sde_steps} (a {kind} step with std 0 is an ODE step)")
    return Trajectory(
        x=torch.stack(xs, dim=1),
        x_next=torch.stack(x_nexts, dim=1),
        logp_old=torch.stack(logps, dim=1),
        mean_old=torch.stack(means, dim=1),
        std=torch.stack(stds),
        step_indices=recorded,
        final=x,
        mean_ref=torch.stack(means_ref, dim=1) if means_ref else None,
    )


@torch.no_grad()
def sample_ode(
    velocity_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, storage_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Deterministic Euler sampling (evaluation, spec §6): the clean sample (B, C, H, W)."""
    x = noise.to(storage_dtype)
    for k in range(len(sigmas) - 1):
        v = velocity_fn(x, sigmas[k].expand(x.shape[0]).to(x.device))
        x = transition("ode", v, x, sigmas[k], sigmas[k + 1], 0.0)[0].to(storage_dtype)
    return x
