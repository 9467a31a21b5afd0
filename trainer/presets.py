"""Named configs as data: the built-in shapes domain with each method (loss, mask, sampler), otherwise identical."""

from __future__ import annotations

from trainer.config import TrainConfig

# Shared by every shapes preset; each value that differs from the TrainConfig default says where it comes from.
_SHAPES = dict(
    model="builtin",
    steps=150,
    resolution=32,
    lora_rank=0,  # full fine-tuning: the built-in model has 0.44M parameters
    train_prompts="shapes:train",
    eval_prompts="shapes:heldout",
    prompts_per_step=16,  # trainer issue: 16 prompts x 8 samples ran ~1 s per step on 2 cores
    group_size=8,
    shared_initial_noise=True,  # trainer issue: with independent noise the group spread was mostly noise
    learning_rate=1e-4,  # trainer issue: lr 1e-4 lifted held-out reward 0.69 -> 0.74-0.79 in 60-150 steps
    eval_every=10,
    sample_every=10,
    num_logged_samples=8,
    checkpoint_every=10,
)

# The real-model presets' reward, from the local paths of docs/real-models.md.
_PICKSCORE = {
    "name": "pickscore",
    "options": {
        "path": "/models/PickScore_v1",
        # PickScore keeps its tokenizer and image settings in the CLIP-H repo (docs/real-models.md)
        "processor_path": "/models/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "dtype": "float16",  # docs/real-models.md: saves 2 GB of GPU memory
    },
}

PRESETS: dict[str, TrainConfig] = {
    "shapes-dppo": TrainConfig(**_SHAPES, loss="dppo", sampler="flow_sde"),
    "shapes-clip": TrainConfig(**_SHAPES, loss="clip", sampler="flow_sde"),
    "shapes-cps-dppo": TrainConfig(**_SHAPES, loss="dppo", sampler="cps"),  # noise_level None -> 0.8 (spec §6)
    "shapes-cps-clip": TrainConfig(**_SHAPES, loss="clip", sampler="cps"),
    # The paper's other methods and ablations on the same domain (issue 12), identical but for what each needs.
    "shapes-dppo-symmetric": TrainConfig(**_SHAPES, loss="dppo", dppo_mask="symmetric"),  # spec §9: "w/o asymmetry"
    "shapes-dppo-first-order": TrainConfig(**_SHAPES, loss="dppo", dppo_mask="first_order"),  # spec §9: App. E
    # clip_range None -> 2e-6, advantage_clip auto -> 5, guard_reweight on: spec §10, flow_grpo config/grpo_guard.py
    "shapes-grpo-guard": TrainConfig(**_SHAPES, loss="grpo_guard"),
    "shapes-nft": TrainConfig(
        **{
            **_SHAPES,
            # spec §11: ODE rollouts are deterministic, so a group's spread can only come from its initial noise
            "shared_initial_noise": False,
        },
        loss="nft",  # nft_beta 1.0, nft_timesteps 9 of num_steps 10: spec §11 (DiffusionNFT's SD3.5 configs)
        beta=1e-4,  # spec §11: beta_kl 1e-4 on (v - v_ref)², the official configs' value
    ),
    "sd35m-dppo": TrainConfig(
        model="sd3",
        model_path="/models/stable-diffusion-3.5-medium",
        resolution=512,
        lora_rank=32,  # spec §6: LoRA r=32, alpha=64 for SD3-class models
        lora_alpha=64.0,
        mixed_precision="bf16",
        train_prompts="file:/models/prompts/train.txt",
        eval_prompts="file:/models/prompts/test.txt",
        rewards=[_PICKSCORE],
        eval_guidance_scale=4.5,  # SD3.5 evaluation default (real-models issue)
        micro_batch_size=4,
        gradient_checkpointing=True,
    ),
    "flux-dev-dppo": TrainConfig(
        model="flux",
        model_path="/models/FLUX.1-dev",
        resolution=512,
        lora_rank=64,  # real-models issue: FLUX rank 64/128
        lora_alpha=128.0,
        mixed_precision="bf16",
        train_prompts="file:/models/prompts/train.txt",
        eval_prompts="file:/models/prompts/test.txt",
        rewards=[_PICKSCORE],
        guidance_scale=3.5,  # FLUX.1-dev is guidance-distilled: the scale feeds its guidance embedding
        eval_guidance_scale=3.5,
        micro_batch_size=2,  # docs/real-models.md: 8 rows with checkpointing use 29 GiB on an H100
        gradient_checkpointing=True,
    ),
}


def get_preset(name: str) -> TrainConfig:
    """A copy of preset `name`; unknown names raise ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].model_copy(deep=True)
