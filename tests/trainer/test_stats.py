"""StepStats (spec §7): tensors until report time, then the reductions a single process always made."""

import pytest
import torch

from trainer.stats import StepStats


def test_report_reduces_like_per_tensor_floats():
    # Row-weighted means, min/max and self-test extremes, D's pooled quantiles, scalars as given.
    stats = StepStats()
    micro = [
        (3, {"ratio/mean": torch.tensor(1.5), "ratio/min": torch.tensor(0.9), "selftest/kl_dev": torch.tensor(0.1)}),
        (1, {"ratio/mean": torch.tensor(0.5), "ratio/min": torch.tensor(0.7)}),
    ]
    for rows, values in micro:
        stats.add(rows, values)
    stats.pool("kl_old", torch.tensor([[0.0, 1.0]]))
    stats.pool("kl_old", torch.tensor([[2.0, 3.0]]))
    stats.scalar("grad_norm", torch.tensor(0.25))
    stats.scalar("lr", 3e-4)
    out = stats.report()
    assert list(out) == [
        "ratio/mean",
        "ratio/min",
        "selftest/kl_dev",
        "kl_old/mean",
        "kl_old/max",
        "kl_old/p50",
        "kl_old/p90",
        "grad_norm",
        "lr",
    ]
    assert out["ratio/mean"] == (3 * 1.5 + 1 * 0.5) / 4 and out["ratio/min"] == pytest.approx(0.7)
    assert out["selftest/kl_dev"] == pytest.approx(0.1) and out["kl_old/max"] == 3.0 and out["kl_old/p50"] == 1.5
    assert out["grad_norm"] == 0.25 and out["lr"] == 3e-4
    assert all(type(v) is float for v in out.values())
