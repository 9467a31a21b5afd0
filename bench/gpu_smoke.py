"""GPU smoke test: a few RL steps of the built-in model and of tiny random SD3/FLUX pipelines, plus (optionally) the
memory of one training micro-batch of SD3.5-M / FLUX.1-dev sized transformers with random weights.

For each training case: step time (median of the steps after the first), peak CUDA memory, and the first-step
self-test (selftest/ratio_dev, selftest/kl_dev: the policy equals pi_old on the first optimizer step after a rollout,
so both must be ~0; the trainer warns above 1e-3). Prints a table; `--json PATH` also writes the rows.

    python bench/gpu_smoke.py                         # CUDA, bf16 for the diffusers models
    python bench/gpu_smoke.py --device cpu --steps 2  # the same cases on the CPU (float32), to check the script
    python bench/gpu_smoke.py --real-sizes            # + SD3.5-M / FLUX.1-dev sized transformers (needs ~60 GB)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.backends.cuda.enable_cudnn_sdp(False)  # see trainer/models/diffusers_model.py: cuDNN SDPA failed on an H100

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo

from trainer.callbacks import NullCallback  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.models.families import FLUX_LORA_TARGETS, SD3_LORA_TARGETS, load_model  # noqa: E402
from trainer.models.flux import FluxModel, pack_latents  # noqa: E402
from trainer.models.lora import add_lora  # noqa: E402
from trainer.models.sd3 import SD3Model  # noqa: E402
from trainer.models.tiny import RESOLUTION, tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: E402
from trainer.presets import get_preset  # noqa: E402
from trainer.train import train  # noqa: E402

SMALL = dict(steps=3, prompts_per_step=4, group_size=4, eval_every=0, sample_every=0, checkpoint_every=0)


class Recorder(NullCallback):
    def __init__(self):
        self.metrics: dict[int, dict[str, float]] = {}
        self.stamps: list[float] = [time.perf_counter()]

    def on_metrics(self, step, metrics):
        if step > 0:
            self.metrics[step] = dict(metrics)
            self.stamps.append(time.perf_counter())


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3)).cpu()


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def run_training_case(name: str, config: TrainConfig, model, device: torch.device, rewards=None) -> dict:
    rec = Recorder()
    with tempfile.TemporaryDirectory() as out:
        train(config, rec, out_dir=Path(out), device=device, model=model, rewards=rewards)
    steps = sorted(rec.metrics)
    times = [b - a for a, b in zip(rec.stamps, rec.stamps[1:], strict=False)]
    later = times[1:] or times
    return {
        "case": name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "batch": config.rollout_batch_size,
        "step_s": statistics.median(later),
        "first_step_s": times[0],
        "peak_gib": peak_gib(device),
        "ratio_dev": max(rec.metrics[s].get("selftest/ratio_dev", float("nan")) for s in steps),
        "kl_dev": max(rec.metrics[s].get("selftest/kl_dev", float("nan")) for s in steps),
        "reward": rec.metrics[steps[-1]].get("reward/total/mean", float("nan")),
    }


def training_cases(device: torch.device, steps: int, precision: str) -> list[dict]:
    rows = []
    builtin = get_preset("shapes-dppo").with_overrides({**SMALL, "steps": steps})
    reset_memory(device)
    try:
        rows.append(run_training_case("builtin shapes-dppo", builtin, load_model(builtin, device), device))
    except FileNotFoundError as err:  # the shipped base is built by `flowdppo pretrain-base`
        print(f"skipped builtin shapes-dppo: {err}")

    tiny = dict(
        SMALL,
        steps=steps,
        resolution=RESOLUTION,
        model_path="/unused",
        lora_rank=8,
        lora_alpha=16.0,
        mixed_precision=precision,
        rewards=[{"name": "shapes"}],
    )
    variants = [
        ("tiny sd3 lora dppo", "sd3", {}),
        ("tiny sd3 lora clip", "sd3", {"loss": "clip"}),
        (
            "tiny sd3 lora dppo cps+ckpt+mb2",
            "sd3",
            {"sampler": "cps", "gradient_checkpointing": True, "micro_batch_size": 2},
        ),
        ("tiny sd3 full-ft dppo beta", "sd3", {"lora_rank": 0, "beta": 0.01}),
        ("tiny flux lora dppo g3.5", "flux", {"guidance_scale": 3.5}),
    ]
    for name, family, overrides in variants:
        config = TrainConfig(model=family, **{**tiny, **overrides})
        build, load = (tiny_sd3_pipeline, SD3Model.load) if family == "sd3" else (tiny_flux_pipeline, FluxModel.load)
        reset_memory(device)
        model = load(config, device, pipeline=build(0), max_sequence_length=32)
        rows.append(run_training_case(name, config, model, device, rewards={"shapes": brightness}))
    return rows


# --- real sizes: one transformer, random bf16 weights, no text encoders or VAE (their cost is in the docs) ---
SD35_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def real_size_cases(device: torch.device, dtype: torch.dtype, resolution: int, micro_batches: list[int]) -> list[dict]:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    rows = []
    for family, cls, cfg, targets, rank, text_len in (
        ("sd3.5-m", SD3Transformer2DModel, SD35_MEDIUM, SD3_LORA_TARGETS, 32, 77 + 256),
        ("flux.1-dev", FluxTransformer2DModel, FLUX_DEV, FLUX_LORA_TARGETS, 64, 512),
    ):
        reset_memory(device)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build directly in bf16: FLUX's 12B in float32 would not fit
        try:
            with torch.device(device):
                transformer = cls(**cfg)
        finally:
            torch.set_default_dtype(default)
        add_lora(transformer, rank, 2 * rank, list(targets))
        weights_gib = peak_gib(device)
        n_params = sum(p.numel() for p in transformer.parameters()) / 1e9
        for checkpointing in (False, True):
            if checkpointing:
                transformer.enable_gradient_checkpointing()
            for mb in micro_batches:
                row = {"case": f"{family} r{rank} {resolution}px", "ckpt": checkpointing, "micro_batch": mb}
                row.update(params_b=round(n_params, 2), weights_gib=weights_gib)
                try:
                    row.update(_train_micro_batch(family, transformer, cfg, device, dtype, resolution, mb, text_len))
                except torch.OutOfMemoryError:
                    row.update(peak_gib="OOM")
                torch.cuda.empty_cache() if device.type == "cuda" else None
                rows.append(row)
        del transformer
    return rows


def _train_micro_batch(family, transformer, cfg, device, dtype, resolution, mb, text_len) -> dict:
    """Peak memory and time of one forward+backward (training) and one no-grad forward (rollout) of `mb` samples."""
    side = resolution // 8
    latents = torch.randn(mb, 16, side, side, device=device, dtype=dtype)
    text = torch.randn(mb, text_len, 4096, device=device, dtype=dtype)
    pooled = torch.randn(mb, cfg["pooled_projection_dim"], device=device, dtype=dtype)
    sigma = torch.full((mb,), 0.7, device=device)
    if family == "sd3.5-m":
        kwargs = dict(
            hidden_states=latents, timestep=sigma * 1000, encoder_hidden_states=text, pooled_projections=pooled
        )
    else:
        from diffusers import FluxPipeline

        kwargs = dict(
            hidden_states=pack_latents(latents),
            timestep=sigma,
            guidance=torch.full((mb,), 3.5, device=device),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(mb, side // 2, side // 2, device, dtype),
        )
    out = {}
    for stage in ("rollout", "train"):
        reset_memory(device)
        start = time.perf_counter()
        with torch.set_grad_enabled(stage == "train"):
            transformer.train(stage == "train")
            v = transformer(**kwargs, return_dict=False)[0]
            if stage == "train":
                v.float().square().mean().backward()
        peak = peak_gib(device)
        out[f"{stage}_s"] = time.perf_counter() - start
        out[f"{stage}_peak_gib"] = peak
        del v
    transformer.zero_grad(set_to_none=True)
    return out


def print_table(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
        return "-" if value is None else str(value)

    cells = [[fmt(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3, help="RL steps per training case (>= 2 for a step time)")
    parser.add_argument("--precision", default="bf16", choices=["no", "fp16", "bf16"], help="diffusers models")
    parser.add_argument("--real-sizes", action="store_true", help="also SD3.5-M / FLUX.1-dev sized transformers")
    parser.add_argument("--real-resolution", type=int, default=512)
    parser.add_argument("--micro-batches", default="1,2,4,8", help="micro-batch sizes for --real-sizes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu")

    rows = training_cases(device, args.steps, args.precision)
    print(f"\n== RL steps on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} ==")
    print_table(rows)
    failed = [r["case"] for r in rows if not r["ratio_dev"] < 1e-3 or not r["kl_dev"] < 1e-3]
    report = {"training": rows}
    if args.real_sizes:
        micro = [int(m) for m in args.micro_batches.split(",")]
        real = real_size_cases(device, torch.bfloat16, args.real_resolution, micro)
        print("\n== one training micro-batch of real-size transformers (LoRA, bf16, random weights) ==")
        print_table(real)
        report["real_sizes"] = real
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"\nself-test: {'FAILED for ' + ', '.join(failed) if failed else 'ok'} (ratio_dev and kl_dev < 1e-3)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
