"""Tiny random SD3 / FLUX pipelines and CLIP reward models built locally (no hub, no downloads, CPU-fast): the
diffusers families' test and smoke-benchmark models (tests/trainer/, bench/gpu_smoke.py).

Tokenizers are made here too: a character-level CLIP BPE vocabulary (no merges) and a T5 unigram vocabulary, so
that the pipelines' real tokenisation code runs.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

CLIP_HIDDEN = 32
CLIP_PROJECTION = 32
T5_DIM = 64
LATENT_CHANNELS = 4
RESOLUTION = 32  # pixels; the VAE halves it: 16x16 latents


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """Character-level CLIP BPE: every lowercase letter/digit with and without the end-of-word suffix."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?-'")
    tokens = specials + chars + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """Unigram T5 tokenizer over characters and a few whole words (pad=0, eos=1, unk=2 as in T5)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + ".,!?-'"]
    pieces += [("\u2581" + w, -1.0) for w in ("a", "the", "red", "blue", "green", "circle", "square", "photo", "of")]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _clip_text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=CLIP_PROJECTION,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def _t5_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(config)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3.5-shaped: two CLIP encoders with projection, T5, an MMDiT with one dual-attention block (as SD3.5-M)."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok3 = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=2 * CLIP_PROJECTION,
        out_channels=LATENT_CHANNELS,
        dual_attention_layers=(0,),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(len(tok))).eval(),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(tok3)).eval(),
        tokenizer_3=tok3,
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-shaped: CLIP (pooled) + T5, one double- and one single-stream block, dynamic shift."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=_t5_encoder(len(tok2)).eval(),
        tokenizer_2=tok2,
    )


def tiny_clip_dir(directory: str | Path, seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> Path:
    """A tiny CLIPModel + CLIPImageProcessor + tokenizer saved in the transformers layout (what rewards load)."""
    torch.manual_seed(seed)
    directory = Path(directory)
    tok = clip_tokenizer()
    text = _clip_text_config(len(tok)).to_dict()
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    CLIPModel(config).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(directory)
    return directory
