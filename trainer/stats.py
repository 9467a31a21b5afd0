"""Per-step training statistics kept as tensors until they are reported (spec §7), ready for a cross-rank reduce (§12).

Nothing here calls `.item()` per micro-batch: `StepStats.report()` moves every statistic of the step to the host in
one transfer, then reduces them in Python float64 exactly as a single process always has. A data-parallel run (spec
§12) gathers the same flat tensor and the value pools from every rank (one collective each) before that reduction.
"""

from __future__ import annotations

import torch

Stats = dict[str, torch.Tensor]  # metric name (spec §7) -> detached 0-d tensor
POOL_QUANTILES = {"p50": 0.5, "p90": 0.9}  # spec §7: the distribution of D, to calibrate delta


class StepStats:
    """One optimisation step's statistics, by how they reduce:

    - `add(rows, stats)`: one micro-batch's stats; a row-weighted mean, except "/min" keys (the min) and "/max" and
      "selftest/" keys (the max: a deviation is its worst case).
    - `pool(name, values)`: values concatenated over micro-batches, reported as name/mean, /max, /p50, /p90.
    - `scalar(key, value)`: a value already reduced over the step (grad-norm mean, learning rate, a monitor).
    """

    def __init__(self) -> None:
        self._rows: list[int] = []
        self._micro: list[Stats] = []
        self._pools: dict[str, list[torch.Tensor]] = {}
        self._scalars: dict[str, torch.Tensor | float] = {}

    def add(self, rows: int, stats: Stats) -> None:
        self._rows.append(rows)
        self._micro.append(stats)

    def pool(self, name: str, values: torch.Tensor) -> None:
        self._pools.setdefault(name, []).append(values.detach())

    def scalar(self, key: str, value: torch.Tensor | float) -> None:
        self._scalars[key] = value

    def to_host(self) -> StepStats:
        """A copy on the CPU, moved in one transfer (what a rank sends to the others, spec §12); dtypes are kept."""
        tensors = [v for stats in self._micro for v in stats.values() if torch.is_tensor(v)]
        tensors += [p for parts in self._pools.values() for p in parts]
        tensors += [v for v in self._scalars.values() if torch.is_tensor(v)]
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]).cpu() if tensors else None
        offset = 0

        def host(value):
            nonlocal offset
            if not torch.is_tensor(value):
                return value
            n = value.numel()
            out = flat[offset : offset + n].view(value.shape).to(value.dtype)  # float64 holds every float exactly
            offset += n
            return out

        copy = StepStats()
        copy._rows = list(self._rows)
        copy._micro = [{k: host(v) for k, v in stats.items()} for stats in self._micro]
        copy._pools = {name: [host(p) for p in parts] for name, parts in self._pools.items()}
        copy._scalars = {k: host(v) for k, v in self._scalars.items()}
        return copy

    @classmethod
    def interleave(cls, ranks: list[StepStats], optimizer_steps: int) -> StepStats:
        """One step's statistics from every rank, in the single-process order: for each optimizer step, rank 0's
        micro-batches, then rank 1's, ... (each rank holds the same number per step: its equal share of the minibatch).
        Scalars (grad norm, lr, the kl_ref monitor) are the same on every rank; rank 0's are kept."""
        out = cls()
        for step in range(optimizer_steps):
            for part in ranks:
                per = len(part._rows) // optimizer_steps
                for i in range(step * per, (step + 1) * per):
                    out.add(part._rows[i], part._micro[i])
                for name, parts in part._pools.items():
                    per_pool = len(parts) // optimizer_steps
                    for p in parts[step * per_pool : (step + 1) * per_pool]:
                        out.pool(name, p)
        out._scalars = dict(ranks[0]._scalars)
        return out

    def report(self) -> dict[str, float]:
        """Every statistic as a Python float: micro-batch keys first, then the pools, then the scalars."""
        pooled: dict[str, torch.Tensor | float] = {}
        for name, parts in self._pools.items():
            values = torch.cat([p.flatten() for p in parts])
            pooled[f"{name}/mean"], pooled[f"{name}/max"] = values.mean(), values.max()
            pooled.update({f"{name}/{q}": values.quantile(level) for q, level in POOL_QUANTILES.items()})
        micro: list[dict[str, torch.Tensor | float]] = [dict(stats) for stats in self._micro]
        scalars: dict[str, torch.Tensor | float] = dict(self._scalars)
        slots = [(table, key) for table in (*micro, pooled, scalars) for key, v in table.items() if torch.is_tensor(v)]
        if slots:  # the step's one host transfer; float32 -> float64 is exact, so each float equals its .item()
            floats = torch.stack([table[key].detach().reshape(()).double() for table, key in slots]).tolist()
            for (table, key), value in zip(slots, floats, strict=True):
                table[key] = value
        out = _reduce_micro_batches(self._rows, micro)
        return {**out, **pooled, **scalars}


def _reduce_micro_batches(rows: list[int], micro: list[dict[str, float]]) -> dict[str, float]:
    """Row-weighted mean over micro-batches; min/max and self-test keys keep their extreme."""
    out: dict[str, float] = {}
    for key in micro[0] if micro else ():
        values = [(n, s[key]) for n, s in zip(rows, micro, strict=True) if key in s]
        if key.endswith("/min"):
            out[key] = min(v for _, v in values)
        elif key.endswith("/max") or key.startswith("selftest/"):  # a deviation is its worst case
            out[key] = max(v for _, v in values)
        else:
            out[key] = sum(n * v for n, v in values) / sum(n for n, _ in values)
    return out
