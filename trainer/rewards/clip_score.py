"""CLIP-based rewards: CLIP score, PickScore, LAION aesthetic predictor, HPSv2 (HF-format weights), all local.

Each reward loads a transformers `CLIPModel` directory given in options {"path": ...}, preprocesses the [0, 1]
images with torch ops exactly as `CLIPImageProcessor` does (shortest-edge bicubic resize, center crop, mean/std
normalisation; no PIL round trip), scores in batches of `batch_size` without gradient, and returns (B,) float32 on
the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.rewards.registry import RewardFn, register_reward

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COMMON_OPTIONS = {"path", "processor_path", "batch_size", "dtype"}


def _check_options(reward: str, options: dict[str, Any], example: str) -> None:
    """The values the registry cannot check by name: the weights directory exists here, the dtype is known."""
    path = options["path"]
    if not Path(path).expanduser().is_dir():
        raise FileNotFoundError(
            f"reward {reward!r}: weights directory {path!r} does not exist. Download {example} on a machine with "
            f"internet (`huggingface-cli download <repo> --local-dir {path}`) and pass it as options {{'path': ...}}"
        )
    if options.get("dtype", "float32") not in _DTYPES:
        raise ValueError(f"reward {reward!r}: dtype must be one of {sorted(_DTYPES)}, got {options['dtype']!r}")


def _image_processor_config(directory: Path, image_size: int) -> dict[str, Any]:
    """size/crop/mean/std from preprocessor_config.json (old int or new dict layouts); CLIP defaults without one."""
    file = directory / "preprocessor_config.json"
    raw = json.loads(file.read_text()) if file.is_file() else {}
    size = raw.get("size", image_size)
    size = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
    crop = raw.get("crop_size", size)
    crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    return {
        "size": int(size),
        "crop": crop_hw,
        "mean": tuple(raw.get("image_mean", OPENAI_CLIP_MEAN)),
        "std": tuple(raw.get("image_std", OPENAI_CLIP_STD)),
    }


class ClipBackbone:
    """A transformers CLIPModel plus its tokenizer and image preprocessing, frozen, on one device.

    Args:
        path: directory of the CLIPModel weights (config.json + safetensors).
        device: where it runs.
        processor_path: directory of the tokenizer and preprocessor_config.json (default: `path`; PickScore keeps
            them in the laion CLIP-H repository).
        batch_size: images per forward pass.
        dtype: "float32" (default, deterministic across batch sizes), "float16" or "bfloat16".
    """

    def __init__(
        self,
        path: str,
        device: torch.device,
        processor_path: str | None = None,
        batch_size: int = 32,
        dtype: str = "float32",
    ):
        import transformers
        from packaging.version import Version
        from transformers import AutoTokenizer, CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.batch_size = batch_size
        # transformers >= 4.56 takes `dtype=`, older versions `torch_dtype=`
        dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        self.model = CLIPModel.from_pretrained(
            Path(path).expanduser(), local_files_only=True, **{dtype_key: self.dtype}
        )
        self.model.to(self.device).eval().requires_grad_(False)
        processor_dir = Path(processor_path or path).expanduser()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(processor_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"no CLIP tokenizer in {str(processor_dir)!r} ({err}); PickScore/HPSv2 keep theirs in "
                f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K: pass that directory as options {{'processor_path': ...}}"
            ) from err
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        pre = _image_processor_config(processor_dir, self.model.config.vision_config.image_size)
        self.size, self.crop = pre["size"], pre["crop"]
        self.mean = torch.tensor(pre["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIPImageProcessor in torch: (B, 3, H, W) in [0, 1] -> (B, 3, crop_h, crop_w) normalised pixel values."""
        images = images.to(self.device, torch.float32)
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        new_hw = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if new_hw != (h, w):  # bicubic with antialias ~ PIL's BICUBIC; clamp its overshoot as uint8 storage would
            images = F.interpolate(images, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
            images = images.clamp(0, 1)
        top, left = (new_hw[0] - self.crop[0]) // 2, (new_hw[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (images - self.mean) / self.std

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D) float32."""
        out = []
        for chunk in images.split(self.batch_size):
            pixels = self.preprocess(chunk).to(self.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (b, hidden)
            out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, D) float32; padded to a fixed length so batching cannot change them."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(
                prompts[start : start + self.batch_size],
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            out.append(F.normalize(self.model.text_projection(pooled.pooler_output).float(), dim=-1))
        return torch.cat(out)


class ClipSimilarity:
    """scale · cos(image, prompt): CLIP score (scale 1), PickScore (scale = exp(logit_scale)), HPSv2 (scale 1)."""

    def __init__(self, backbone: ClipBackbone, use_logit_scale: bool):
        self.backbone = backbone
        self.scale = backbone.model.logit_scale.exp().item() if use_logit_scale else 1.0

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"got {images.shape[0]} images for {len(prompts)} prompts")
        cosine = (self.backbone.image_embeds(images) * self.backbone.text_embeds(prompts)).sum(-1)  # (B,)
        return (self.scale * cosine).cpu()


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head (christophschuhmann/improved-aesthetic-predictor).

    Input: the L2-normalised CLIP ViT-L/14 image embedding (B, 768); output: the predicted 1-10 rating (B, 1).
    State-dict keys layers.{0,2,4,6,7}.{weight,bias}, as in sac+logos+ava1-l14-linearMSE.pth.
    """

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_aesthetic_head(path: str | Path) -> AestheticMLP:
    """An AestheticMLP from a LAION .pth (torch.save'd state dict) or .safetensors file; input dim from the weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"aesthetic head {str(path)!r} does not exist: download sac+logos+ava1-l14-linearMSE.pth from "
            f"christophschuhmann/improved-aesthetic-predictor and pass options {{'head_path': '/models/...pth'}}"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ValueError(
            f"{path} is not a LAION aesthetic head: expected keys layers.0.weight ..., got {list(state)[:4]}"
        )
    head = AestheticMLP(input_dim=state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)


class AestheticScore:
    """LAION aesthetic score: MLP(normalised CLIP image embedding); prompts are ignored."""

    def __init__(self, backbone: ClipBackbone, head: AestheticMLP):
        dim = backbone.model.config.projection_dim
        if head.input_dim != dim:
            raise ValueError(
                f"aesthetic head expects {head.input_dim}-d embeddings but the CLIP model gives {dim}-d: the LAION "
                f"head goes with openai/clip-vit-large-patch14 (768-d)"
            )
        self.backbone = backbone
        self.head = head.to(backbone.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        embeds = self.backbone.image_embeds(images)  # (B, D) already L2-normalised, as LAION's `normalized()`
        return self.head(embeds).squeeze(-1).float().cpu()


def _backbone(device: torch.device, options: dict[str, Any]) -> ClipBackbone:
    return ClipBackbone(
        options["path"],
        device,
        processor_path=options.get("processor_path"),
        batch_size=int(options.get("batch_size", 32)),
        dtype=options.get("dtype", "float32"),
    )


@register_reward("clip_score", options=_COMMON_OPTIONS, required=["path"])
def clip_score(device: torch.device, **options: Any) -> RewardFn:
    """Cosine similarity of CLIP image and prompt embeddings, in [-1, 1] (not x100, not clipped at 0).

    Options: path (CLIPModel directory, e.g. openai/clip-vit-large-patch14), processor_path, batch_size, dtype.
    """
    _check_options("clip_score", options, "a transformers CLIPModel (e.g. openai/clip-vit-large-patch14)")
    return ClipSimilarity(_backbone(device, options), use_logit_scale=False)


@register_reward("pickscore", options=_COMMON_OPTIONS, required=["path"])
def pickscore(device: torch.device, **options: Any) -> RewardFn:
    """PickScore: exp(logit_scale) · cos(image, prompt) with the PickScore_v1 CLIP-H (about 18-23 on real images).

    Options: path (yuvalkirstain/PickScore_v1), processor_path (laion/CLIP-ViT-H-14-laion2B-s32B-b79K: tokenizer and
    preprocessor; default: path), batch_size, dtype.
    """
    _check_options("pickscore", options, "yuvalkirstain/PickScore_v1 (CLIP-H)")
    return ClipSimilarity(_backbone(device, options), use_logit_scale=True)


@register_reward("hpsv2", options=_COMMON_OPTIONS, required=["path"])
def hpsv2(device: torch.device, **options: Any) -> RewardFn:
    """HPSv2: cos(image, prompt) with the HPSv2 CLIP-H, as hpsv2.score does (about 0.25-0.30 on real images).

    HPSv2 ships an open_clip checkpoint (HPS_v2_compressed.pt); this reward reads the same weights converted to the
    transformers CLIPModel layout (a ViT-H-14 directory), since open_clip is not a dependency of this project.
    Options: path (converted HPSv2 directory), processor_path (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), batch_size,
    dtype.
    """
    path = options.get("path")
    if path and Path(path).expanduser().is_file():
        raise ValueError(
            f"reward 'hpsv2': {path!r} is a file (the open_clip checkpoint?); convert it to a transformers CLIPModel "
            f"directory (ViT-H-14 layout) and pass that directory as options {{'path': ...}}"
        )
    _check_options("hpsv2", options, "HPSv2 weights in the transformers CLIPModel layout")
    return ClipSimilarity(_backbone(device, options), use_logit_scale=False)


@register_reward("aesthetic", options=_COMMON_OPTIONS, required=["path", "head_path"])
def aesthetic(device: torch.device, **options: Any) -> RewardFn:
    """LAION aesthetic predictor v2: MLP head on the normalised CLIP ViT-L/14 image embedding (about 1-10).

    Options: path (openai/clip-vit-large-patch14 directory), head_path (sac+logos+ava1-l14-linearMSE.pth or a
    .safetensors of the same state dict), processor_path, batch_size, dtype.
    """
    _check_options("aesthetic", options, "openai/clip-vit-large-patch14")
    head = load_aesthetic_head(options["head_path"])
    return AestheticScore(_backbone(device, options), head)
