"""The shapes domain (trainer/shapes.py) and prompt sets (trainer/prompts.py): grammar, splits, renderer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainer.prompts import load_prompts
from trainer.shapes import COLORS, POSITIONS, SHAPES, ShapeSpec, all_prompts, parse_prompt, prompt_split, render


def _object_mask(images: np.ndarray) -> np.ndarray:
    return images.max(axis=1) > 0.5  # (B, H, W)


# --- grammar ---


def test_palette_is_well_separated_and_in_range():
    assert len(COLORS) >= 5
    rgb = np.array(list(COLORS.values()))
    assert rgb.min() >= 0 and rgb.max() <= 1
    # every pair differs by at least one full channel, so blur and tint cannot confuse them
    for a, b in itertools.combinations(rgb, 2):
        assert np.linalg.norm(a - b) >= 1.0 - 1e-9


def test_every_prompt_round_trips_through_the_parser():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(COLORS) * len(SHAPES) * len(POSITIONS)
    for prompt in prompts:
        assert parse_prompt(prompt).prompt == prompt
    assert parse_prompt("a red circle in the top left") == ShapeSpec("red", "circle", "top left")
    assert parse_prompt("  A Cyan  TRIANGLE in the center. ") == ShapeSpec("cyan", "triangle", "center")


@pytest.mark.parametrize(
    "bad", ["a purple circle in the top left", "a red hexagon in the center", "a red circle", "hello", ""]
)
def test_parse_rejects_prompts_outside_the_grammar_naming_them(bad):
    with pytest.raises(ValueError, match="not of the shapes grammar") as err:
        parse_prompt(bad)
    assert repr(bad) in str(err.value)


def test_shape_spec_validates_its_fields():
    with pytest.raises(ValueError, match="color='purple'"):
        ShapeSpec("purple", "circle", "center")


# --- splits ---


def test_splits_partition_all_prompts_deterministically():
    train, heldout, everything = prompt_split("train"), prompt_split("heldout"), prompt_split("all")
    assert everything == all_prompts()
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(everything)
    assert 0.2 <= len(heldout) / len(everything) <= 0.25
    assert prompt_split("heldout") == heldout  # fixed, not random


def test_heldout_is_compositional_every_value_and_pair_is_trained():
    train = [parse_prompt(p) for p in prompt_split("train")]
    assert {s.color for s in train} == set(COLORS)
    assert {s.shape for s in train} == set(SHAPES)
    assert {s.position for s in train} == set(POSITIONS)
    # stronger: every pair of attribute values is seen in training; only the triple is new
    assert {(s.color, s.shape) for s in train} == set(itertools.product(COLORS, SHAPES))
    assert {(s.color, s.position) for s in train} == set(itertools.product(COLORS, POSITIONS))
    assert {(s.shape, s.position) for s in train} == set(itertools.product(SHAPES, POSITIONS))


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="'test'.*train, heldout, all"):
        prompt_split("test")


# --- renderer ---


def test_render_returns_float32_images_on_black():
    images = render(all_prompts(), np.random.default_rng(0))
    assert images.shape == (len(all_prompts()), 3, 32, 32) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images[:, :, 0, :].max() == 0 and images[:, :, -1, :].max() == 0  # top/bottom rows are background
    assert (images.max(axis=1) < 1e-6).mean() > 0.8  # mostly black


@pytest.mark.parametrize("resolution", [32, 64])
def test_render_draws_the_prompted_colour_at_the_prompted_position_and_size(resolution):
    prompts = all_prompts()
    images = render(prompts, np.random.default_rng(1), resolution=resolution)
    mask = _object_mask(images)
    grid = (np.arange(resolution) + 0.5) / resolution
    for image, m, prompt in zip(images, mask, prompts, strict=True):
        spec = parse_prompt(prompt)
        pixels = image[:, m]  # (3, n); anti-aliased edges are darker but keep the hue
        assert np.allclose(pixels / pixels.max(axis=0), np.array(COLORS[spec.color])[:, None], atol=1e-6)
        ys, xs = np.nonzero(m)
        cx, cy = POSITIONS[spec.position]
        assert abs(grid[xs].mean() - cx) < 0.07 and abs(grid[ys].mean() - cy) < 0.09  # triangle centroid sits low
        width = (xs.max() - xs.min() + 1) / resolution
        slack = 1.5 / resolution  # pixel quantisation of a thresholded, anti-aliased outline
        assert 0.25 - slack <= width <= 1 / 3 + slack  # about 1/4 to 1/3 of the side


def test_render_shapes_fill_their_bounding_box_as_expected():
    # circle pi/4, square 1, triangle 1/2, measured at 64 px without jitter
    expected = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
    for shape, fill in expected.items():
        mask = _object_mask(render([f"a red {shape} in the center"], np.random.default_rng(0), 64, jitter=False))[0]
        ys, xs = np.nonzero(mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert mask.sum() / box == pytest.approx(fill, abs=0.06), shape


def test_render_jitter_is_seeded_and_optional():
    prompts = all_prompts()[:16]
    a = render(prompts, np.random.default_rng(7))
    assert np.array_equal(a, render(prompts, np.random.default_rng(7)))
    assert not np.array_equal(a, render(prompts, np.random.default_rng(8)))
    fixed = render(prompts, np.random.default_rng(7), jitter=False)
    assert np.array_equal(fixed, render(prompts, np.random.default_rng(8), jitter=False))
    # the same prompt twice in one batch differs only with jitter
    twice = render([prompts[0]] * 2, np.random.default_rng(0))
    assert not np.array_equal(twice[0], twice[1])


def test_render_rejects_bad_prompts_and_resolutions():
    with pytest.raises(ValueError, match="'a red blob'"):
        render(["a red blob"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="resolution=4"):
        render(all_prompts()[:1], np.random.default_rng(0), resolution=4)


# --- prompt sets ---


@pytest.mark.parametrize("split", ["train", "heldout", "all"])
def test_load_prompts_shapes_splits(split):
    assert load_prompts(f"shapes:{split}") == prompt_split(split)


def test_load_prompts_file_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na cat on a mat\n   \n  a dog  \n#a comment\na cat on a mat\n", encoding="utf-8")
    assert load_prompts(f"file:{path}") == ["a cat on a mat", "a dog", "a cat on a mat"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shapes:test", "unknown shapes split 'test'"),
        ("geneval:train", "not understood"),
        ("shapes", "not understood"),
        ("file:", "not understood"),
        ("file:/no/such/prompts.txt", "does not exist"),
    ],
)
def test_load_prompts_rejects_unknown_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        load_prompts(spec)


def test_load_prompts_names_a_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match="does not exist") as err:
        load_prompts(f"file:{missing}")
    assert str(missing) in str(err.value)


def test_load_prompts_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(f"file:{path}")
