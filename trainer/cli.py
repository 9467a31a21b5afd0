"""`flowdppo train` and `flowdppo pretrain-base`: thin shells over trainer.train and trainer.pretrain."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from trainer.config import TrainConfig, format_validation_error, parse_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="Run a standalone training (no platform) with a progress bar.")
    p.add_argument("config", help="Preset name (e.g. shapes-dppo) or a JSON/YAML config file.")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config field, e.g. --set loss=clip --set rewards.0.weight=0.5",
    )
    p.add_argument("--steps", type=int, help="Shortcut for --set steps=N.")
    p.add_argument("--out", type=Path, help="Output folder (default runs/<config name>).")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0.")
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="Run N data-parallel ranks on this machine through torchrun (cuda: one GPU each, NCCL; cpu: gloo).",
    )
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("pretrain-base", help="Rebuild the shipped built-in base model by flow matching.")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="Default: the shipped trainer/assets file.")
    p.set_defaults(handler=_pretrain)

    p = subparsers.add_parser("presets", help="List the named configs.")
    p.set_defaults(handler=_presets)


def resolve_config(name_or_path: str, overrides: list[str]) -> TrainConfig:
    """A preset name or a config file, with --set overrides applied and validated."""
    from trainer.presets import PRESETS, get_preset

    if name_or_path in PRESETS:
        config = get_preset(name_or_path)
    elif Path(name_or_path).is_file():
        config = TrainConfig.from_file(name_or_path)
    else:
        raise ValueError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
    return config.with_overrides(parse_overrides(overrides)) if overrides else config


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.callbacks import CallbackList, JsonlCallback, NullCallback
    from trainer.distributed import DistributedSetupError, init_from_env, shutdown
    from trainer.launch import under_torchrun
    from trainer.trackers import with_mirrors
    from trainer.train import train

    overrides = args.overrides + ([f"steps={args.steps}"] if args.steps else [])
    if args.nproc_per_node > 1 and not under_torchrun():
        return _launch_ranks(args, overrides)
    if under_torchrun() and not any(o.startswith("num_processes=") for o in overrides):
        overrides.append(f"num_processes={os.environ['WORLD_SIZE']}")  # `torchrun ... -m flowdppo train` directly
    try:
        config = resolve_config(args.config, overrides)
        ranks, device = init_from_env(args.device)  # torchrun's process group, or one rank
    except ValidationError as err:
        print(f"invalid config:\n{format_validation_error(err)}", file=sys.stderr)
        return 2
    except (ValueError, DistributedSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / Path(args.config).stem
    if not ranks.is_main:  # spec §12: rank 0 alone writes the folder, the progress bar and the mirrors
        try:
            train(config, NullCallback(), out_dir=out, device=device, ranks=ranks)
        finally:
            shutdown()
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    bar = tqdm(total=config.steps, desc=Path(args.config).stem, unit="step")
    primary = CallbackList([JsonlCallback(out), _progress_bar(bar)])
    try:  # config.trackers: TensorBoard folders / MLflow databases inside `out`, or an MLflow server
        callback = with_mirrors(
            primary,
            config.trackers,
            out,
            run_name=out.resolve().name,
            run_key=f"local:{out.resolve()}",
            params=config.model_dump(mode="json"),
        )
    except ImportError as err:  # a tracker's extra is missing: say so before training
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    status = "FAILED"
    try:
        result = train(config, callback, out_dir=out, device=device, ranks=ranks)
        status = "KILLED" if result.stopped else "FINISHED"
    finally:
        callback.close(status)
        bar.close()
        shutdown()
    print(f"{result.steps_completed} steps; metrics, samples and checkpoints in {out}")
    return 0


def _progress_bar(bar):
    """A callback that moves the tqdm `bar` to each reported step, with the step's reward and D beside it."""
    from trainer.callbacks import NullCallback

    class ProgressBar(NullCallback):
        def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
            if step == 0:
                return
            bar.update(step - bar.n)
            shown = {
                k.split("/")[-2] if k.count("/") > 1 else k: metrics[k]
                for k in ("reward/total/mean", "eval/reward/total/mean", "kl_old/mean")
                if k in metrics
            }
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    return ProgressBar()


def _launch_ranks(args: argparse.Namespace, overrides: list[str]) -> int:
    """`--nproc-per-node N`: validate here (a bad config or NCCL without a GPU fails before any rank starts), then
    run the N ranks under torchrun and return its exit status."""
    import subprocess

    from trainer.distributed import DistributedSetupError, check_backend
    from trainer.launch import torchrun_command

    try:
        resolve_config(args.config, [*overrides, f"num_processes={args.nproc_per_node}"])
        check_backend(args.device, args.nproc_per_node)
    except ValidationError as err:
        print(f"invalid config:\n{format_validation_error(err)}", file=sys.stderr)
        return 2
    except (ValueError, DistributedSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / Path(args.config).stem
    return subprocess.call(torchrun_command(args.config, overrides, out, args.device, args.nproc_per_node))


def _pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.models.builtin import SHIPPED_BASE
    from trainer.pretrain import pretrain_base

    out = args.out or Path(str(resources.files("trainer") / "assets" / SHIPPED_BASE))
    bar = tqdm(total=args.steps, desc="pretrain", unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    info = pretrain_base(out, args.steps, args.batch_size, args.lr, args.seed, on_step=on_step)
    bar.close()
    print(
        f"saved {out}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
    )
    return 0


def _presets(args: argparse.Namespace) -> int:
    from trainer.loss_registry import LOSSES
    from trainer.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, config in PRESETS.items():
        method = f"loss={config.loss}" + (f" dppo_mask={config.dppo_mask}" if config.loss == "dppo" else "")
        # the forward family (nft) samples its rollouts with the ODE sampler (spec §11)
        sampler = config.sampler if LOSSES[config.loss].family == "sde" else "ode"
        print(f"{name:{width}s} model={config.model} {method} sampler={sampler} steps={config.steps}")
    return 0
