"""Weight-free verifier rewards for the shapes domain: colour, shape and position checked on pixels (GenEval spirit).

Registers "shapes" (mean of the three sub-scores) and "shapes_color", "shapes_shape", "shapes_position" (each alone,
for multi-objective GDPO runs and as monitors; spec §5). The method, all vectorised torch on the images' device:

1. Object mask. The background level (median pixel, per channel) is subtracted; brightness is then the max over
   RGB (every palette colour has a channel at 1). A pixel's weight w in [0, 1] ramps with its brightness and with
   its 3x3 neighbourhood's mean, so isolated noise pixels do not count while the outline stays sharp.
2. Presence gate. The object's area (sum of w, fraction of the image) must be plausible and its mass compact:
   compactness = area / (2·pi·(var_x + var_y)) is 1 for a disc, 0.96 for a square, 0.82 for our triangle and about
   0.95·area for anything spread over the frame (noise). Every sub-score is multiplied by the gate, so a blank,
   noisy or full-frame image earns no credit at all.
3. Colour: the w-weighted fraction of object pixels whose chromaticity rgb / max(rgb) is nearest the target colour
   (white is a rejecting prototype, so a grey blob matches nothing).
4. Position: distance of the w-centroid to the target centre; full credit within 0.1 of the side, none beyond 0.22
   (the nearest wrong position is 0.35 away).
5. Shape: two blur-robust moment invariants of the object, taken within a window around the centroid so far-off
   noise cannot dominate: the fourth-moment isotropy (m40 + m04) / (6·m22) (1 for a disc, 0.6 for an axis-aligned
   square: the corners) and the vertical skewness m03 / m02^1.5 (0 for disc and square, -0.57 for the upward
   triangle). Circle = round and symmetric, square = cornered and symmetric, triangle = round and pointed, each cue a
   linear ramp with margin on both sides. There is no softmax over shapes: credit is absolute, so a shapeless or
   absent object cannot earn it by elimination.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.rewards.registry import RewardFn, register_reward
from trainer.shapes import COLORS, POSITIONS, SHAPES, parse_prompt

# Soft object mask: a pixel's own brightness ramps 0 -> 1 over [_MASK_LO, _MASK_HI]; its 3x3 neighbourhood mean must
# also ramp over [_SUPPORT_LO, _SUPPORT_HI], which removes isolated noise pixels without blurring the outline.
_MASK_LO, _MASK_HI = 0.25, 0.5
_SUPPORT_LO, _SUPPORT_HI = 0.15, 0.3
# Gate on the object's area as a fraction of the image (objects are about 0.03-0.11; blur widens them).
_AREA_ZERO_LO, _AREA_FULL_LO, _AREA_FULL_HI, _AREA_ZERO_HI = 0.004, 0.012, 0.25, 0.4
# Gate on compactness (disc 1.0, square 0.96, triangle 0.82, blurred shapes >= 0.8, spread-out mass ~0.95·area).
_COMPACT_ZERO, _COMPACT_FULL = 0.35, 0.6
# Position credit: full within _POS_FULL of the target centre, zero beyond _POS_ZERO (fractions of the side).
_POS_FULL, _POS_ZERO = 0.1, 0.22
# Shape moments use pixels within this many rms radii of the centroid (the triangle's apex sits at 2.1 rms).
_WINDOW_RMS = 2.75
# Shape cues, each a ramp from "no credit" to "full credit" with the clean values far outside it (see the docstring):
# isotropy is 0.6 for a square (0.75 when blurred twice at 32 px) and 0.95-1.1 for a circle or triangle.
_ISO_ZERO, _ISO_FULL = 0.79, 0.9
# |skew| is below 0.05 for a circle or square (0.1 noisy); the triangle's skew is -0.57 (-0.25 when blurred twice).
_SKEW_ZERO, _SKEW_FULL = 0.1, 0.22
_EPS = 1e-8  # keeps divisions finite on an all-black image (its gate is 0 anyway)


def _ramp(x: torch.Tensor, zero: float, full: float) -> torch.Tensor:
    """Piecewise-linear credit: 0 at `zero`, 1 at `full` (either order), clamped outside."""
    return ((x - zero) / (full - zero)).clamp(0.0, 1.0)


def _moment(w: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """Normalised central moment E_w[dx^p dy^q]: w (B, H, W), dx (B, 1, W), dy (B, H, 1) -> (B,)."""
    return (w * dx**p * dy**q).sum((1, 2)) / (w.sum((1, 2)) + _EPS)


def _centre(
    w: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroid (cx, cy) (B,) of weights w (B, H, W) and offsets dx (B, 1, W), dy (B, H, 1) from it."""
    mass = w.sum((1, 2)) + _EPS
    cx = (w * xs).sum((1, 2)) / mass
    cy = (w * ys[:, None]).sum((1, 2)) / mass
    return cx, cy, xs[None, None, :] - cx[:, None, None], ys[None, :, None] - cy[:, None, None]


def _targets(prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target index into COLORS (B,), into SHAPES (B,) and centre (B, 2) per prompt; ValueError names a bad prompt."""
    specs = [parse_prompt(p) for p in prompts]
    color = torch.tensor([list(COLORS).index(s.color) for s in specs], dtype=torch.long, device=device)
    shape = torch.tensor([SHAPES.index(s.shape) for s in specs], dtype=torch.long, device=device)
    center = torch.tensor([POSITIONS[s.position] for s in specs], dtype=torch.float32, device=device)
    return color, shape, center.reshape(-1, 2)


@torch.no_grad()
def score_attributes(images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Score each image against its prompt, per attribute.

    Args:
        images: (B, 3, H, W) float in [0, 1], any resolution >= 8, on any device.
        prompts: B prompts of the shapes grammar.

    Returns:
        {"color", "shape", "position", "gate"}: (B,) float32 on the images' device, each in [0, 1]; the first three
        already include the presence gate.

    Raises:
        ValueError: for a bad images shape, a prompt count mismatch or a prompt outside the grammar.
    """
    if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 8:
        raise ValueError(f"images must be (B, 3, H, W) with H, W >= 8, got shape {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; they must match one to one")
    x = images.float().clamp(0.0, 1.0)
    _, _, height, width = x.shape
    target_color, target_shape, target_xy = _targets(prompts, x.device)

    # 1. object mask: brightness above background, with 3x3 support -> soft weight
    # Subtract the background level per channel (the median pixel: the object covers < 15% of the frame), so a uniform
    # haze, tinted or not, is ignored and a full-frame colour becomes an empty frame.
    stride = max(1, min(height, width) // 16)  # a ~16x16 subsample is plenty for a median and 4-16x cheaper
    background = x[:, :, ::stride, ::stride].flatten(2).median(dim=2).values  # (B, 3)
    x = (x - background[:, :, None, None]).clamp_min(0.0)  # (B, 3, H, W)
    brightness = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    support = F.avg_pool2d(F.pad(brightness, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[:, 0]  # (B, H, W)
    w = _ramp(brightness[:, 0], _MASK_LO, _MASK_HI) * _ramp(support, _SUPPORT_LO, _SUPPORT_HI)  # (B, H, W)
    mass = w.sum((1, 2)) + _EPS  # (B,)
    xs = (torch.arange(width, device=x.device, dtype=torch.float32) + 0.5) / width  # pixel centres, fractions
    ys = (torch.arange(height, device=x.device, dtype=torch.float32) + 0.5) / height
    cx, cy, dx, dy = _centre(w, xs, ys)

    # 2. presence gate: plausible area and compact mass
    area = mass / (height * width)  # (B,)
    spread = _moment(w, dx, dy, 2, 0) + _moment(w, dx, dy, 0, 2)  # (B,) var_x + var_y
    compactness = area / (2.0 * math.pi * spread + _EPS)
    gate = _ramp(area, _AREA_ZERO_LO, _AREA_FULL_LO) * _ramp(area, _AREA_ZERO_HI, _AREA_FULL_HI)
    gate = gate * _ramp(compactness, _COMPACT_ZERO, _COMPACT_FULL)  # (B,)

    # 3. colour: fraction of object mass whose chromaticity is nearest the target colour
    palette = torch.tensor([*COLORS.values(), (1.0, 1.0, 1.0)], dtype=torch.float32, device=x.device)  # (K, 3)
    chroma = (x / (x.amax(dim=1, keepdim=True) + 1e-3)).flatten(2)  # (B, 3, N), brightness-invariant
    # argmin_k |c - p_k|^2 = argmax_k (c·p_k - |p_k|^2 / 2): one matmul instead of a (B, K, 3, N) difference.
    affinity = torch.einsum("kc,bcn->bkn", palette, chroma) - 0.5 * (palette**2).sum(1)[None, :, None]  # (B, K, N)
    target_affinity = affinity.gather(1, target_color[:, None, None].expand(-1, 1, affinity.shape[2]))[:, 0]  # (B, N)
    # amax, not argmax: torch's argmax over a middle dim is ~50x slower on CPU. Ties go to the target.
    is_target = (target_affinity >= affinity.amax(1) - 1e-6).float().view_as(w)  # (B, H, W)
    color = (w * is_target).sum((1, 2)) / mass

    # 4. position: centroid distance to the target centre
    offset = torch.sqrt((cx - target_xy[:, 0]) ** 2 + (cy - target_xy[:, 1]) ** 2)  # (B,)
    position = _ramp(offset, _POS_ZERO, _POS_FULL)

    # 5. shape: moment invariants of the brightness (keeps anti-aliasing: sub-pixel detail) near the centroid
    window = (dx**2 + dy**2 <= (_WINDOW_RMS**2) * spread[:, None, None]).float()  # (B, H, W)
    w_shape = brightness[:, 0] * _ramp(support, _SUPPORT_LO, _SUPPORT_HI) * window  # (B, H, W)
    _, _, sx, sy = _centre(w_shape, xs, ys)  # re-centred on w_shape's own centroid, else the skew sees the offset
    m02 = _moment(w_shape, sx, sy, 0, 2)
    m22 = _moment(w_shape, sx, sy, 2, 2)
    isotropy = (_moment(w_shape, sx, sy, 4, 0) + _moment(w_shape, sx, sy, 0, 4)) / (6.0 * m22 + _EPS)  # (B,)
    skew = _moment(w_shape, sx, sy, 0, 3) / (m02.clamp_min(_EPS) ** 1.5)  # (B,)
    roundness = _ramp(isotropy, _ISO_ZERO, _ISO_FULL)  # (B,) 1 = corners absent (circle, triangle), 0 = square
    symmetric = _ramp(skew.abs(), _SKEW_FULL, _SKEW_ZERO)  # (B,) 1 = top/bottom balanced (circle, square)
    pointed = _ramp(-skew, _SKEW_ZERO, _SKEW_FULL)  # (B,) 1 = mass low, apex up (triangle)
    per_shape = torch.stack([roundness * symmetric, (1.0 - roundness) * symmetric, roundness * pointed], 1)  # (B, 3)
    shape = per_shape.gather(1, target_shape[:, None])[:, 0]  # (B,)

    return {"color": color * gate, "shape": shape * gate, "position": position * gate, "gate": gate}


def _make_reward(name: str, keys: tuple[str, ...]) -> None:
    """Register reward `name` as the mean of the sub-scores `keys`, returned as (B,) float32 on CPU."""

    @register_reward(name)
    def factory(device: torch.device) -> RewardFn:
        def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            scores = score_attributes(images.to(device), prompts)
            return torch.stack([scores[k] for k in keys]).mean(0).float().cpu()  # (B,)

        return reward


_make_reward("shapes", ("color", "shape", "position"))
_make_reward("shapes_color", ("color",))
_make_reward("shapes_shape", ("shape",))
_make_reward("shapes_position", ("position",))
