"""Data-parallel scaling benchmark (prints a table, not a test; spec §12): one run at W = 1 and at W = 2 gloo ranks
on this CPU, one thread per rank.

    .venv/bin/python bench/distributed_scaling.py [--steps 4] [--prompts 8] [--group 8] [--worlds 1,2]

For each W: step time and images/s (the mean over the steps after the first, which pays for the prompt cache and
DDP's first bucket rebuild), the scaling efficiency (images/s at W over W x images/s at 1), and the time rank 0
spends in collectives per step: the rollout and reward gathers, the statistics gather and the stop flag (blocking,
including any wait for a slower rank) plus DDP's gradient all-reduce (from the hook's call to its completion, which
overlaps the backward pass). The machine's load average is printed before and after: on a shared machine the
numbers are noisy. With --steps 4 and 8 x 8 images a run takes about a minute per W on two idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed_ranks(comm: list[float]):
    """A Ranks subclass that adds the seconds of every collective of the loop, and of DDP's all-reduces, to `comm`."""
    import torch.distributed as dist

    from trainer.distributed import Ranks

    class TimedRanks(Ranks):
        pass

    for name in ("gather_rollout", "gather_rewards", "reduce_stats", "any", "barrier"):
        plain = getattr(Ranks, name)

        def timed(self, *args, _plain=plain, **kwargs):
            t0 = time.perf_counter()
            try:
                return _plain(self, *args, **kwargs)
            finally:
                comm.append(time.perf_counter() - t0)

        setattr(TimedRanks, name, timed)

    def hooked(self, module, _plain=Ranks._wrapped):
        fresh = id(module) not in self._ddp
        ddp = _plain(self, module)
        if fresh:

            def allreduce(state, bucket):
                t0 = time.perf_counter()
                tensor = bucket.buffer().div_(dist.get_world_size())
                fut = dist.all_reduce(tensor, async_op=True).get_future()

                def done(f):
                    comm.append(time.perf_counter() - t0)
                    return f.value()[0]

                return fut.then(done)

            ddp.register_comm_hook(None, allreduce)
        return ddp

    TimedRanks._wrapped = hooked
    return TimedRanks


def _rank_main(config_json: str, out: str, report: str) -> None:
    """One rank: train() with the collectives timed; rank 0 writes the per-step timings as JSON."""
    import torch

    from trainer.callbacks import NullCallback
    from trainer.config import TrainConfig
    from trainer.distributed import init_from_env, shutdown
    from trainer.train import train

    torch.set_num_threads(1)
    comm: list[float] = []  # seconds in blocking collectives, this step
    TimedRanks = _timed_ranks(comm)
    base, _ = init_from_env("cpu")
    ranks = TimedRanks(rank=base.rank, world_size=base.world_size, device=base.device)
    steps: list[dict[str, float]] = []

    class Timer(NullCallback):
        def on_metrics(self, step, metrics):
            if step > 0:
                total = sum(metrics[k] for k in ("time/rollout_s", "time/reward_s", "time/train_s"))
                steps.append({"step_s": total, "comm_s": sum(comm)})
            comm.clear()

    config = TrainConfig.model_validate_json(Path(config_json).read_text())
    train(config, Timer(), out_dir=Path(out), resume=False, ranks=ranks)
    shutdown()
    if ranks.is_main:
        Path(report).write_text(json.dumps(steps))


def _run(world: int, args: argparse.Namespace, tmp: Path) -> list[dict[str, float]]:
    from trainer.presets import get_preset

    overrides = {
        "steps": args.steps,
        "prompts_per_step": args.prompts,
        "group_size": args.group,
        "eval_every": 0,
        "sample_every": 0,
        "checkpoint_every": 0,
        "num_processes": world,
    }
    config = get_preset("shapes-dppo").with_overrides(overrides)
    folder = tmp / f"w{world}"
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json())
    rank_args = [__file__, "--rank", str(folder / "config.json"), str(folder / "run"), str(folder / "report.json")]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "--max-restarts=0"]
    cmd = [sys.executable, *(launcher if world > 1 else []), *rank_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    return json.loads((folder / "report.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--rank", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        _rank_main(*args.rank)
        return 0
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    images = args.prompts * args.group
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in [int(w) for w in args.worlds.split(",")]:
            timed = _run(world, args, Path(tmp))
            timed = timed[1:] or timed  # drop the warm-up step
            step_s = sum(s["step_s"] for s in timed) / len(timed)
            comm_s = sum(s["comm_s"] for s in timed) / len(timed)
            rows.append((world, step_s, images / step_s, comm_s))
    base = rows[0][2]
    print(
        f"distributed scaling: shapes-dppo, {images} images/step, {args.steps} steps (first dropped), gloo, 1 thread"
    )
    print(f"load average before: {load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'W':>3} {'step s':>8} {'images/s':>9} {'efficiency':>10} {'collectives s/step':>19} {'share':>6}")
    for world, step_s, ips, comm_s in rows:
        eff = ips / (world * base)
        print(f"{world:>3} {step_s:>8.2f} {ips:>9.2f} {eff:>10.2f} {comm_s:>19.3f} {comm_s / step_s:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
