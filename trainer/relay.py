"""A run's ranks reporting to the process that started them, through a folder (spec §12; platform.md "Runs on
several GPUs"): rank 0's callback appends what it reports to DIR/events.jsonl (sample images as .npy files beside
it), the parent replays those events into its own callback and answers should_stop by creating DIR/stop.

    torchrun --standalone --nproc-per-node N --max-restarts 0 -m trainer.relay CONFIG.json OUT_DIR RELAY_DIR --device D

The parent (the platform's worker) stays the only writer of its store, with its own callback, heartbeat and fencing;
the ranks know nothing of it. Each rank records an exception it dies of in DIR/error.rank<k>.json (`transient`: a
collective failed, i.e. another rank died or hung: the attempt is lost, not the run's fault); rank 0 records the
result in DIR/result.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.callbacks import Callback, NullCallback, Sample

EVENTS, STOP, RESULT = "events.jsonl", "stop", "result.json"
PARENT_PID_ENV = "FLOWDPPO_RELAY_PARENT_PID"  # the ranks stop (checkpointing) when this process is gone


class RelayCallback(NullCallback):
    """Rank 0's callback: every report becomes one line of DIR/events.jsonl, written whole and flushed."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._parent = int(os.environ.get(PARENT_PID_ENV, "0"))

    def _append(self, event: dict) -> None:
        with open(self.folder / EVENTS, "a") as f:
            f.write(json.dumps(event) + "\n")

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._append({"kind": "metrics", "step": step, "metrics": metrics})

    def on_samples(self, step: int, samples: list[Sample]) -> None:
        rows = []
        for s in samples:
            name = f"sample_{step:06d}_{s.index:04d}.npy"
            np.save(self.folder / name, s.image)
            rows.append({"prompt": s.prompt, "seed": s.seed, "index": s.index, "rewards": s.rewards, "file": name})
        self._append({"kind": "samples", "step": step, "samples": rows})

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._append({"kind": "checkpoint", "step": step, "path": str(path)})

    def should_stop(self) -> bool:
        return (self.folder / STOP).exists() or (self._parent > 0 and not _alive(self._parent))


class RelayReader:
    """The parent's side: replays the complete lines added since the last call into `callback`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._offset = 0

    def replay(self, callback: Callback) -> int:
        path = self.folder / EVENTS
        if not path.is_file():
            return 0
        with open(path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._offset += len(complete)
        events = [json.loads(line) for line in complete.decode().splitlines() if line]
        for event in events:
            step = event["step"]
            if event["kind"] == "metrics":
                callback.on_metrics(step, event["metrics"])
            elif event["kind"] == "samples":
                callback.on_samples(step, [self._sample(row) for row in event["samples"]])
            elif event["kind"] == "checkpoint":
                callback.on_checkpoint(step, Path(event["path"]))
        return len(events)

    def _sample(self, row: dict) -> Sample:
        image = np.load(self.folder / row["file"])
        return Sample(prompt=row["prompt"], seed=row["seed"], index=row["index"], image=image, rewards=row["rewards"])

    def request_stop(self) -> None:
        (self.folder / STOP).touch()

    def result(self) -> dict | None:
        path = self.folder / RESULT
        return json.loads(path.read_text()) if path.is_file() else None

    def errors(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("error.rank*.json"))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (torchrun or the worker killed: no orphaned rank)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _is_transient(err: BaseException) -> bool:
    """A failed collective (a peer died, hung past the timeout, or its connection closed) rather than a bug."""
    return isinstance(err, torch.distributed.DistError) or "timed out" in str(err).lower() or "Connection" in str(err)


def main(argv: list[str] | None = None) -> int:
    from trainer.config import TrainConfig
    from trainer.distributed import init_from_env, shutdown
    from trainer.train import train

    parser = argparse.ArgumentParser(prog="python -m trainer.relay")
    parser.add_argument("config", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("relay", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    die_with_parent()
    if threads := os.environ.get("FLOWDPPO_RANK_THREADS"):
        torch.set_num_threads(int(threads))
    ranks, device = init_from_env(args.device)
    config = TrainConfig.model_validate_json(args.config.read_text())
    callback = RelayCallback(args.relay) if ranks.is_main else NullCallback()
    try:
        result = train(config, callback, out_dir=args.out_dir, device=device, ranks=ranks)
    except BaseException as err:
        info = {"rank": ranks.rank, "error": f"{type(err).__name__}: {err}"[:4000], "transient": _is_transient(err)}
        (args.relay / f"error.rank{ranks.rank}.json").write_text(json.dumps(info))
        raise  # no shutdown(): after a failed collective it could block; the process exit frees the group
    shutdown()
    if ranks.is_main:
        (args.relay / RESULT).write_text(json.dumps({"steps": result.steps_completed, "stopped": result.stopped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
