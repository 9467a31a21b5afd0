"""Built-in weight-free rewards: the shapes verifier (and its sub-rewards) and JPEG (in)compressibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.rewards import available_rewards, build_reward
from trainer.rewards.jpeg import jpeg_sizes_kb
from trainer.rewards.shapes_verifier import score_attributes
from trainer.shapes import COLORS, POSITIONS, SHAPES, ShapeSpec, all_prompts, parse_prompt, render

SUB_REWARDS = ("shapes_color", "shapes_shape", "shapes_position")


def _render(prompts: list[str], seed: int = 0, resolution: int = 32) -> torch.Tensor:
    return torch.from_numpy(render(prompts, np.random.default_rng(seed), resolution=resolution))


def _blur(images: torch.Tensor) -> torch.Tensor:
    """3x3 box blur, edges replicated."""
    return F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _one_wrong(prompt: str, attribute: str) -> str:
    """The prompt with `attribute` replaced by the next value of its list."""
    spec = parse_prompt(prompt)
    values = {"color": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS)}[attribute]
    current = getattr(spec, attribute)
    fields = {"color": spec.color, "shape": spec.shape, "position": spec.position}
    fields[attribute] = values[(values.index(current) + 1) % len(values)]
    return ShapeSpec(**fields).prompt


@pytest.fixture(scope="module")
def shapes():
    return build_reward("shapes")


# --- registry contract ---


def test_builtin_rewards_are_registered():
    names = available_rewards()
    for name in ("shapes", *SUB_REWARDS, "jpeg_compressibility", "jpeg_incompressibility"):
        assert name in names


@pytest.mark.parametrize("name", ["shapes", *SUB_REWARDS])
def test_shapes_rewards_reject_unknown_options_by_name(name):
    with pytest.raises(ValueError, match="threshold"):
        build_reward(name, {"threshold": 0.5})


def test_shapes_reward_returns_cpu_float32_without_grad(shapes):
    prompts = all_prompts()[:8]
    images = _render(prompts).requires_grad_(True)
    scores = shapes(images, prompts)
    assert scores.shape == (8,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert not scores.requires_grad
    assert ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(scores, shapes(images, prompts))  # deterministic


def test_shapes_is_the_mean_of_its_sub_rewards(shapes):
    prompts = all_prompts()
    images = _blur(_render(prompts))
    images[::3] = _render([_one_wrong(p, "shape") for p in prompts[::3]])  # mixed credit
    subs = torch.stack([build_reward(name)(images, prompts) for name in SUB_REWARDS])
    assert torch.allclose(shapes(images, prompts), subs.mean(0), atol=1e-6)


def test_shapes_reward_rejects_prompts_outside_the_grammar(shapes):
    with pytest.raises(ValueError, match="'a photo of a cat'"):
        shapes(torch.zeros(2, 3, 32, 32), ["a red circle in the center", "a photo of a cat"])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        shapes(torch.zeros(2, 3, 32, 32), ["a red circle in the center"])


# --- what the verifier must promise ---


@pytest.mark.parametrize("resolution", [32, 64])
def test_ground_truth_scores_high_on_every_prompt(shapes, resolution):
    prompts = all_prompts() * 3  # three jitter draws per prompt
    scores = shapes(_render(prompts, seed=resolution, resolution=resolution), prompts)
    worst = int(scores.argmin())
    assert scores.min() >= 0.95, f"{prompts[worst]!r} scored {scores[worst]:.3f}"


@pytest.mark.parametrize(
    ("attribute", "name"), [("color", "shapes_color"), ("shape", "shapes_shape"), ("position", "shapes_position")]
)
def test_one_wrong_attribute_scores_about_two_thirds(shapes, attribute, name):
    prompts = all_prompts()
    images = _render([_one_wrong(p, attribute) for p in prompts], seed=3)
    scores = shapes(images, prompts)
    assert torch.allclose(scores, torch.full_like(scores, 2 / 3), atol=0.05), scores.min()
    assert build_reward(name)(images, prompts).max() <= 0.05  # that attribute earns nothing
    others = [n for n in SUB_REWARDS if n != name]
    assert min(build_reward(n)(images, prompts).min() for n in others) >= 0.95  # the others keep full credit


def test_blurred_noisy_off_colour_renders_keep_credit(shapes):
    # model outputs are blurry and slightly off-colour: 3x3 blur, dimmed, tinted, with pixel noise
    prompts = all_prompts() * 2
    generator = torch.Generator().manual_seed(0)
    images = _blur(_render(prompts, seed=4)) * 0.85
    images = images + 0.1 * (images.amax(1, keepdim=True) > 0.05) * torch.rand(
        len(prompts), 3, 1, 1, generator=generator
    )
    images = (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    scores = shapes(images, prompts)
    assert scores.mean() >= 0.95 and scores.min() >= 0.85, (scores.mean(), scores.min())
    blurred_twice = shapes(_blur(_blur(_render(prompts, seed=5))), prompts)
    assert blurred_twice.min() >= 0.85


def test_white_or_grey_objects_earn_no_colour_credit():
    # white rejects: a grey blob is not "nearest" to whichever hue happens to tie with it
    prompts = all_prompts()
    grey = _render(prompts).amax(1, keepdim=True).expand(-1, 3, -1, -1) * 0.8  # (B, 3, H, W)
    assert build_reward("shapes_color")(grey, prompts).max() <= 0.05
    assert build_reward("shapes_shape")(grey, prompts).min() >= 0.95  # shape and position still verified


def _noise_and_blanks(batch: int, resolution: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 3, resolution, resolution)
    full = torch.tensor(list(COLORS.values()))[torch.arange(batch) % len(COLORS)]  # (B, 3)
    return {
        "uniform noise": torch.rand(shape, generator=generator),
        "gaussian noise": (0.5 + 0.25 * torch.randn(shape, generator=generator)).clamp(0, 1),
        "dark gaussian noise": (0.3 * torch.randn(shape, generator=generator)).clamp(0, 1),
        "black": torch.zeros(shape),
        "full-frame colour": full[:, :, None, None].expand(shape).clone(),
    }


@pytest.mark.parametrize("resolution", [32, 64])
def test_noise_blank_and_full_frame_images_score_low(resolution):
    prompts = all_prompts()
    shapes = build_reward("shapes")
    for kind, images in _noise_and_blanks(len(prompts), resolution).items():
        assert shapes(images, prompts).mean() < 0.2, kind
        for name, scores in score_attributes(images, prompts).items():  # no sub-score may give free credit
            assert scores.mean() < 0.2, f"{name} gave {kind} {scores.mean():.3f}"  # (e.g. a softmax over shapes)


def test_score_attributes_rejects_bad_image_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        score_attributes(torch.zeros(2, 1, 32, 32), all_prompts()[:2])


# --- JPEG ---


def test_jpeg_rewards_rank_flat_images_as_more_compressible():
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 64, 64), 0.5)
    busy = torch.rand((2, 3, 64, 64), generator=generator)
    images, prompts = torch.cat([flat, busy]), ["x"] * 4
    compress = build_reward("jpeg_compressibility")(images, prompts)
    incompress = build_reward("jpeg_incompressibility")(images, prompts)
    assert compress.shape == (4,) and compress.dtype == torch.float32
    assert torch.equal(compress, -incompress)
    assert (compress < 0).all()
    assert compress[:2].min() > compress[2:].max()  # flat beats noise
    assert incompress[2:].min() > 1.0  # a 64x64 noise JPEG at quality 95 is several kB


def test_jpeg_quality_option_changes_the_size_and_is_validated():
    images = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(1))
    assert jpeg_sizes_kb(images, quality=10) < jpeg_sizes_kb(images, quality=95)
    low = build_reward("jpeg_incompressibility", {"quality": 10})(images, ["x"])
    assert torch.allclose(low, jpeg_sizes_kb(images, quality=10))
    for bad in (0, 96, 50.0, "95", True):
        with pytest.raises(ValueError, match="quality"):
            build_reward("jpeg_compressibility", {"quality": bad})
    with pytest.raises(ValueError, match="qualty"):
        build_reward("jpeg_compressibility", {"qualty": 90})
