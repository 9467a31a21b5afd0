"""One rank of a data-parallel test run (spec §12), started by tests/trainer/test_distributed.py.

    torchrun --standalone --nproc-per-node 2 tests/trainer/distributed_rank.py CONFIG.json OUT_DIR RESULT_PREFIX
    python tests/trainer/distributed_rank.py CONFIG.json OUT_DIR RESULT_PREFIX          (W = 1, the reference)

Writes RESULT_PREFIX.rank<k>.pt: the metrics rank 0 reported, the first step's samples (the gathered rollout's final
latents), every step's rewards and advantages, the trained weights and the steps completed. Test knobs from the
environment: STOP_AFTER=n (rank 0's callback asks to stop after n reported steps), HANG_RANK=k and HANG_STEP=s (rank k
stops taking part in collectives at step s: a hung rank).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from trainer import train as train_module
from trainer.callbacks import NullCallback
from trainer.config import TrainConfig
from trainer.distributed import Ranks, init_from_env, shutdown
from trainer.metrics import TIMING_PREFIXES
from trainer.models.families import load_model


class Recorder(NullCallback):
    def __init__(self, stop_after: int | None):
        self.metrics: dict[int, dict[str, float]] = {}
        self.stop_after = stop_after

    def on_metrics(self, step, metrics):
        self.metrics[step] = {k: v for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}

    def should_stop(self):
        return self.stop_after is not None and len([s for s in self.metrics if s > 0]) >= self.stop_after


def run(config: TrainConfig, out_dir: Path, ranks: Ranks, stop_after: int | None = None) -> dict:
    """train() with hooks that record the rollout's samples, the rewards and the advantages of every step."""
    captured: dict[str, list] = {"final": [], "rewards": [], "adv": []}
    advantages, gather_rollout, agree = train_module._advantages, Ranks.gather_rollout, Ranks.any

    def record_advantages(config, rewards, group_ids):
        adv, metrics = advantages(config, rewards, group_ids)
        captured["rewards"].append({k: v.clone() for k, v in rewards.items()})
        captured["adv"].append(adv.clone())
        return adv, metrics

    def record_rollout(self, rollout):
        full = gather_rollout(self, rollout)
        captured["final"].append(full.traj.final.clone())
        return full

    def maybe_hang(self, flag):
        if self.rank == int(os.environ.get("HANG_RANK", "-1")) and len(captured["adv"]) + 1 >= int(
            os.environ.get("HANG_STEP", "0")
        ):
            time.sleep(3600)  # alive but silent: the others must give up at the collective timeout
        return agree(self, flag)

    train_module._advantages, Ranks.gather_rollout, Ranks.any = record_advantages, record_rollout, maybe_hang
    try:
        model = load_model(config, "cpu")
        recorder = Recorder(stop_after)
        result = train_module.train(config, recorder, out_dir=out_dir, model=model, ranks=ranks)
    finally:
        train_module._advantages, Ranks.gather_rollout, Ranks.any = advantages, gather_rollout, agree
    return {
        "metrics": recorder.metrics,
        "final": captured["final"][0],
        "rewards": captured["rewards"],
        "adv": captured["adv"],
        "params": model.trainable_state_dict(),
        "steps_completed": result.steps_completed,
        "stopped": result.stopped,
    }


def main() -> None:
    torch.set_num_threads(1)  # one thread per rank, as the W = 1 reference
    config_path, out_dir, prefix = sys.argv[1:4]
    ranks, _ = init_from_env("cpu")
    config = TrainConfig.model_validate_json(Path(config_path).read_text())
    stop_after = int(os.environ["STOP_AFTER"]) if "STOP_AFTER" in os.environ else None
    try:
        result = run(config, Path(out_dir), ranks, stop_after)
    finally:
        shutdown()
    torch.save(result, f"{prefix}.rank{ranks.rank}.pt")


if __name__ == "__main__":
    main()
