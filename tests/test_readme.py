"""The README keeps its promises: the two set-up commands, and the metric table that trainer/metrics.py defines."""

from pathlib import Path

from trainer.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_metric_is_documented():
    missing = [key for key in METRICS if f"`{key}`" not in README]
    assert not missing, f"README's metric table lacks {missing}"


def test_two_setup_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
