"""The procedural "shapes" domain: prompt grammar, train/held-out splits and the ideal renderer.

One coloured shape on a black background, e.g. "a red circle in the top left". The built-in model is pretrained on
`render(..., jitter=True)` and RL-tuned against `trainer.rewards.shapes_verifier`, which checks the same three
attributes. The held-out split is a set of colour x shape x position combinations never shown in training
(compositional generalisation): every single attribute value, and every pair of values, still appears in training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Colours sit on corners of the RGB cube, so any two differ by a full channel (distance >= 1): well separated even
# after a blurry, slightly off-colour generator has had its way with them.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# (cx, cy) as fractions of the image side; y grows downwards as in image arrays.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

# Half the object's side as a fraction of the image: the full object spans 0.29 of the side (brief: 1/4 to 1/3).
HALF_SIZE = 0.145
POSITION_JITTER = 0.04  # uniform +-, fraction of the side, per axis
SIZE_JITTER = 0.12  # the half size is scaled by a uniform factor in [1 - j, 1 + j]
# A combination (colour i, shape j, position k) is held out iff (i + j + k) % 5 == 0. For each (colour, shape) pair
# exactly one of the 5 positions is held out, so 18 of 90 prompts (20%) are held out and all pairs stay in training.
_HELDOUT_MODULUS = 5

_PROMPT_RE = re.compile(
    r"^an? (?P<color>{c}) (?P<shape>{s}) in the (?P<position>{p})\.?$".format(
        c="|".join(COLORS), s="|".join(SHAPES), p="|".join(POSITIONS)
    )
)


@dataclass(frozen=True)
class ShapeSpec:
    """The three attributes a prompt asks for; `prompt` is the canonical sentence."""

    color: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("color", self.color, tuple(COLORS)),
            ("shape", self.shape, SHAPES),
            ("position", self.position, tuple(POSITIONS)),
        ):
            if value not in allowed:
                raise ValueError(f"ShapeSpec {field}={value!r} is not one of {', '.join(allowed)}")

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape} in the {self.position}"


@lru_cache(maxsize=4096)
def _parse_cached(prompt: str) -> ShapeSpec:
    match = _PROMPT_RE.match(" ".join(prompt.lower().split()))
    if match is None:
        raise ValueError(
            f"prompt {prompt!r} is not of the shapes grammar 'a <color> <shape> in the <position>' with color in "
            f"{{{', '.join(COLORS)}}}, shape in {{{', '.join(SHAPES)}}}, position in {{{', '.join(POSITIONS)}}}"
        )
    return ShapeSpec(match["color"], match["shape"], match["position"])


def parse_prompt(prompt: str) -> ShapeSpec:
    """Parse "a red circle in the top left" (case and extra spaces ignored, optional final period).

    Raises:
        ValueError: naming the prompt and the grammar when it does not match.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt {prompt!r} must be a string, got {type(prompt).__name__}")
    return _parse_cached(prompt)


def _is_heldout(spec: ShapeSpec) -> bool:
    index = list(COLORS).index(spec.color) + SHAPES.index(spec.shape) + list(POSITIONS).index(spec.position)
    return index % _HELDOUT_MODULUS == 0


def all_prompts() -> list[str]:
    """Every colour x shape x position prompt (90), in a fixed order (colour, then shape, then position)."""
    return [ShapeSpec(c, s, p).prompt for c in COLORS for s in SHAPES for p in POSITIONS]


def prompt_split(name: str) -> list[str]:
    """The prompts of split `name`: "train" (72), "heldout" (18, combinations never trained on) or "all" (90).

    Raises:
        ValueError: for any other split name.
    """
    if name not in SPLITS:
        raise ValueError(f"prompt split {name!r} is unknown; allowed: {', '.join(SPLITS)}")
    prompts = all_prompts()
    if name == "all":
        return prompts
    keep_heldout = name == "heldout"
    return [p for p in prompts if _is_heldout(parse_prompt(p)) == keep_heldout]


def render(prompts: list[str], rng: np.random.Generator, resolution: int = 32, jitter: bool = True) -> np.ndarray:
    """Draw the ideal image of each prompt: one anti-aliased shape on black (vectorised over the batch).

    Args:
        prompts: B prompts of the shapes grammar.
        rng: source of the position/size jitter (unused when `jitter` is False).
        resolution: image side H = W in pixels.
        jitter: shift the centre by up to +-POSITION_JITTER and scale the size by up to +-SIZE_JITTER.

    Returns:
        float32 array (B, 3, H, W) in [0, 1].

    Raises:
        ValueError: for a prompt outside the grammar or a resolution below 8.
    """
    if resolution < 8:
        raise ValueError(f"resolution={resolution} is too small to draw a shape; use at least 8 pixels")
    specs = [parse_prompt(p) for p in prompts]
    batch = len(specs)
    center = np.array([POSITIONS[s.position] for s in specs], dtype=np.float64).reshape(batch, 2)  # (B, 2)
    half = np.full(batch, HALF_SIZE)  # (B,)
    if jitter:
        center = center + rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=(batch, 2))
        half = half * rng.uniform(1.0 - SIZE_JITTER, 1.0 + SIZE_JITTER, size=batch)
    # Pixel centres in fractions of the side; everything below is (B, H, W) by broadcasting.
    grid = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    dx = grid[None, None, :] - center[:, 0, None, None]  # (B, 1, W)
    dy = grid[None, :, None] - center[:, 1, None, None]  # (B, H, 1)
    r = half[:, None, None]  # (B, 1, 1)
    # Signed distance to each outline (negative inside), in fractions of the side.
    sd_circle = np.sqrt(dx**2 + dy**2) - r
    sd_square = np.maximum(np.abs(dx), np.abs(dy)) - r
    # Upward isosceles triangle: apex (0, -r), base from (-r, r) to (r, r); edges have normals (+-2, -1) / sqrt(5).
    sd_triangle = np.maximum(dy - r, (2.0 * np.abs(dx) - dy - r) / np.sqrt(5.0))
    shape_index = np.array([SHAPES.index(s.shape) for s in specs]).reshape(batch, 1, 1)
    sd = np.where(shape_index == 0, sd_circle, np.where(shape_index == 1, sd_square, sd_triangle))  # (B, H, W)
    # Coverage of a one-pixel box filter across the edge: mild anti-aliasing.
    coverage = np.clip(0.5 - sd * resolution, 0.0, 1.0)  # (B, H, W)
    rgb = np.array([COLORS[s.color] for s in specs], dtype=np.float64).reshape(batch, 3)  # (B, 3)
    return (coverage[:, None] * rgb[:, :, None, None]).astype(np.float32)  # (B, 3, H, W)
