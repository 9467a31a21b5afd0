"""CLIP-based rewards on a tiny random CLIP built locally: shapes, batching, determinism, reference maths, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPModel

from trainer.models.tiny import tiny_clip_dir
from trainer.rewards import available_rewards, build_reward
from trainer.rewards.clip_score import AestheticMLP

CLIP_REWARDS = ["clip_score", "pickscore", "hpsv2"]
PROMPTS = ["a red circle", "a blue square", "", "green green green", "a photo of a square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def head_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("head") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(AestheticMLP(input_dim=16).state_dict(), path)
    return path


def images(n=5, size=(40, 48), seed=0):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def options(name, clip_dir, head_path, **extra):
    opts = {"path": str(clip_dir), **extra}
    if name == "aesthetic":
        opts["head_path"] = str(head_path)
    return opts


def test_rewards_are_registered():
    assert {"clip_score", "pickscore", "hpsv2", "aesthetic", "remote"} <= set(available_rewards())


@pytest.mark.parametrize("name", [*CLIP_REWARDS, "aesthetic"])
def test_shape_batching_and_determinism(name, clip_dir, head_path):
    whole = build_reward(name, options(name, clip_dir, head_path, batch_size=5))
    chunked = build_reward(name, options(name, clip_dir, head_path, batch_size=2))
    x = images()
    scores = whole(x, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(chunked(x, PROMPTS), scores, atol=1e-5, rtol=1e-5)  # 5 in chunks of 2 == one batch
    assert torch.equal(whole(x, PROMPTS), scores)  # deterministic
    assert scores.std() > 0  # it looks at the images


def reference_clip(clip_dir, x, prompts):
    """Scores the transformers way: CLIPImageProcessor on uint8 images, get_*_features, cosine."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clip_dir)
    arrays = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in x]
    pixels = processor(images=arrays, return_tensors="pt").pixel_values
    tokens = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(**tokens).pooler_output)
    return model, F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_clip_score_and_pickscore_match_the_transformers_pipeline(clip_dir, head_path):
    # Images already at the processor's size: the torch preprocessing must equal CLIPImageProcessor exactly
    # (up to the uint8 rounding the processor does).
    x = (images(size=(32, 32)) * 255).round() / 255
    model, img, txt = reference_clip(clip_dir, x, PROMPTS)
    cosine = (img * txt).sum(-1)
    torch.testing.assert_close(
        build_reward("clip_score", {"path": str(clip_dir)})(x, PROMPTS), cosine, atol=1e-5, rtol=0
    )
    pick = build_reward("pickscore", {"path": str(clip_dir)})(x, PROMPTS)
    torch.testing.assert_close(pick, model.logit_scale.exp() * cosine, atol=1e-4, rtol=0)
    head = AestheticMLP(16).eval()
    head.load_state_dict(torch.load(head_path))
    aesthetic = build_reward("aesthetic", {"path": str(clip_dir), "head_path": str(head_path)})(x, PROMPTS)
    torch.testing.assert_close(aesthetic, head(img).squeeze(-1).detach(), atol=1e-5, rtol=0)


def test_resizing_is_close_to_the_pil_processor(clip_dir):
    # Larger, non-square images: torch bicubic+antialias vs PIL bicubic differ slightly, never in kind.
    x = F.interpolate(images(size=(8, 10)), size=(64, 80), mode="bilinear")  # smooth images, as generated ones are
    _, img, txt = reference_clip(clip_dir, x, PROMPTS)
    ours = build_reward("clip_score", {"path": str(clip_dir)})(x, PROMPTS)
    torch.testing.assert_close(ours, (img * txt).sum(-1), atol=2e-2, rtol=0)


def test_aesthetic_head_loads_from_safetensors_too(clip_dir, head_path, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "head.safetensors"
    save_file(torch.load(head_path), str(st))
    x = images()
    a = build_reward("aesthetic", {"path": str(clip_dir), "head_path": str(head_path)})(x, PROMPTS)
    b = build_reward("aesthetic", {"path": str(clip_dir), "head_path": str(st)})(x, PROMPTS)
    assert torch.equal(a, b)


def test_errors_teach(clip_dir, head_path, tmp_path):
    with pytest.raises(ValueError, match=r"unknown options \['pth'\]"):
        build_reward("pickscore", {"path": str(clip_dir), "pth": 1})
    with pytest.raises(ValueError, match="needs options"):
        build_reward("clip_score", {})
    with pytest.raises(FileNotFoundError, match="does not exist.*huggingface-cli download"):
        build_reward("pickscore", {"path": "/models/PickScore_v1_missing"})
    with pytest.raises(FileNotFoundError, match="head_path"):
        build_reward("aesthetic", {"path": str(clip_dir), "head_path": str(tmp_path / "none.pth")})
    wrong = tmp_path / "wrong.pth"
    torch.save(AestheticMLP(input_dim=768).state_dict(), wrong)
    with pytest.raises(ValueError, match="expects 768-d embeddings"):
        build_reward("aesthetic", {"path": str(clip_dir), "head_path": str(wrong)})
    with pytest.raises(ValueError, match="is a file"):
        build_reward("hpsv2", {"path": str(head_path)})
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_reward("clip_score", {"path": str(clip_dir), "dtype": "fp8"})
