"""How a training or evaluation run reports: metrics, samples, checkpoints, and the should-stop query."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class Sample:
    """One generated image with what produced it, so runs can be compared image by image."""

    prompt: str
    seed: int
    index: int  # position in the run's fixed sample set (same prompt+seed across runs)
    image: np.ndarray  # (H, W, 3) uint8
    rewards: dict[str, float] = field(default_factory=dict)


class Callback(Protocol):
    """What the trainer calls. The CLI writes files; the worker writes to the database."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_samples(self, step: int, samples: list[Sample]) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def should_stop(self) -> bool:
        """Checked between steps: returning True ends the run after the current step (cooperative cancel)."""
        ...


class NullCallback:
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_samples(self, step: int, samples: list[Sample]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class JsonlCallback(NullCallback):
    """Writes DIR/metrics.jsonl (one object per step: {"step": n, <spec §7 keys>...}) and DIR/samples/."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._started = False

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        path = self.out_dir / "metrics.jsonl"
        if not self._started and path.is_file():
            # A resumed run replays the steps after its last checkpoint: drop the lines it is about to rewrite.
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < step]
            path.write_text("".join(line + "\n" for line in kept))
        self._started = True
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def on_samples(self, step: int, samples: list[Sample]) -> None:
        from PIL import Image

        folder = self.out_dir / "samples" / f"step_{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        index = []
        for s in samples:
            name = f"{s.index:03d}_seed{s.seed}.png"
            Image.fromarray(s.image).save(folder / name)
            index.append({"file": name, "prompt": s.prompt, "seed": s.seed, "index": s.index, "rewards": s.rewards})
        (folder / "index.json").write_text(json.dumps(index, indent=1))


class CallbackList(NullCallback):
    """Fans every event out to several callbacks; stops when any of them asks to."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_metrics(step, metrics)

    def on_samples(self, step: int, samples: list[Sample]) -> None:
        for cb in self.callbacks:
            cb.on_samples(step, samples)

    def on_checkpoint(self, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(step, path)

    def should_stop(self) -> bool:
        return any(cb.should_stop() for cb in self.callbacks)
