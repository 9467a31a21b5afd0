"""One run over W = 2 gloo ranks equals the same run on one process (spec §12), on CPU with one thread per rank.

Measured tolerance (W = 2 vs W = 1, builtin model, 3 steps, lr 1e-3): the step-1 samples, rewards and advantages are
bitwise equal; the weights differ by the gradient all-reduce's summation order only, |dtheta| <= TOL_ABS +
TOL_REL·|theta| with the bounds below (the largest difference measured was 9e-8 for dppo and 6e-8 for clip, about one
float32 ulp of the weights); metrics agree to rel 1e-3 or abs 1e-6 (a loss of ~2e-5 differed by 6e-8).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from trainer.config import TrainConfig
from trainer.distributed import DistributedSetupError, Ranks, check_backend, init_from_env
from trainer.presets import get_preset
from trainer.train import train

RANK_SCRIPT = Path(__file__).with_name("distributed_rank.py")
REPO = Path(__file__).resolve().parents[2]
TOL_REL, TOL_ABS = 1e-5, 1e-6  # measured: |dtheta| <= 9e-8 (dppo), 6e-8 (clip); see the module docstring
RUN_TIMEOUT_S = 300

BASE = {
    "steps": 3,
    "prompts_per_step": 4,
    "group_size": 4,  # B = 16: 8 samples (2 whole groups) per rank
    "eval_every": 3,
    "eval_num_samples": 4,
    "eval_num_steps": 4,
    "sample_every": 0,
    "checkpoint_every": 1,
    "learning_rate": 1e-3,
}
CASES = {
    # 2 minibatches of 8: each rank takes 4 rows as 2 micro-batches of 2 (no_sync, then the synced backward)
    "dppo": {**BASE, "loss": "dppo", "num_minibatches": 2, "micro_batch_size": 2},
    # 2 inner epochs of one minibatch of 16: 8 rows per rank as 2 micro-batches of 4
    "clip": {**BASE, "loss": "clip", "inner_epochs": 2, "num_minibatches": 1, "micro_batch_size": 4},
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def launch(config: TrainConfig, out: Path, world: int, **env: str) -> subprocess.CompletedProcess:
    """Run the test rank script as `world` ranks (torchrun for W > 1, a plain process for W = 1)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.with_overrides({"num_processes": world}).to_json())
    args = [str(RANK_SCRIPT), str(out / "config.json"), str(out / "run"), str(out / "result")]
    if world > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "--max-restarts=0"]
        args = torchrun + args
    return subprocess.run(
        [sys.executable, *args], env=_env(**env), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def result(out: Path, rank: int = 0) -> dict:
    return torch.load(out / f"result.rank{rank}.pt", weights_only=False)


def run_ok(config: TrainConfig, out: Path, world: int, **env: str) -> dict:
    proc = launch(config, out, world, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return result(out)


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=TOL_REL, atol=TOL_ABS, msg=name)


def assert_close_metrics(a: dict[int, dict], b: dict[int, dict], steps) -> None:
    for step in steps:
        assert a[step].keys() == b[step].keys()
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, rel=1e-3, abs=1e-6), (step, key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Each case once at W = 1 and once at W = 2 (the second keeps its run folder for the resume test)."""
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for name, overrides in CASES.items():
        config = get_preset("shapes-dppo").with_overrides(overrides)
        for world in (1, 2):
            out[f"{name}-w{world}"] = {
                "root": root / f"{name}-w{world}",
                **run_ok(config, root / f"{name}-w{world}", world),
            }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_rank(runs, case):
    one, two = runs[f"{case}-w1"], runs[f"{case}-w2"]
    # step 1: the same samples, rewards and advantages, bit for bit (same micro-batch size: the same forward chunks)
    assert torch.equal(one["final"], two["final"])
    assert all(torch.equal(one["rewards"][0][k], two["rewards"][0][k]) for k in one["rewards"][0])
    assert torch.equal(one["adv"][0], two["adv"][0])
    # the step-1 rollout statistics come from the same rewards: equal floats
    exact = [k for k in one["metrics"][1] if k.startswith(("reward/", "adv/", "zero_std", "selftest/"))]
    assert {k: one["metrics"][1][k] for k in exact} == {k: two["metrics"][1][k] for k in exact}
    # afterwards: equal up to the gradient all-reduce's summation order; evaluation (rank 0) reported as at W = 1
    assert_close_metrics(one["metrics"], two["metrics"], steps=(0, 1, 2, 3))
    assert "eval/reward/total/mean" in two["metrics"][3]
    assert_close_weights(one["params"], two["params"])
    assert two["steps_completed"] == 3 and result(two["root"], rank=1)["steps_completed"] == 3


@pytest.mark.slow
def test_lora_with_gradient_checkpointing_under_ddp(tmp_path):
    """peft LoRA on a (tiny) SD3 transformer with diffusers' non-reentrant gradient checkpointing, under DDP with
    no_sync micro-batches: the same samples and metrics as one process (measured: every metric equal, weights within
    3e-11)."""
    from trainer.models.tiny import RESOLUTION, tiny_sd3_pipeline

    tiny_sd3_pipeline(0).save_pretrained(tmp_path / "sd3")
    overrides = {
        **{k: BASE[k] for k in ("checkpoint_every", "learning_rate")},
        "prompts_per_step": 2,
        **{"model": "sd3", "model_path": str(tmp_path / "sd3"), "resolution": RESOLUTION, "lora_rank": 4},
        **{"gradient_checkpointing": True, "steps": 2, "group_size": 2, "num_steps": 4, "sde_steps": 1},
        **{"eval_every": 0, "sample_every": 0, "num_minibatches": 1, "micro_batch_size": 1},
        "rewards": [{"name": "jpeg_compressibility"}],
    }
    config = get_preset("shapes-dppo").with_overrides(overrides)
    one, two = run_ok(config, tmp_path / "w1", 1), run_ok(config, tmp_path / "w2", 2)
    assert torch.equal(one["final"], two["final"]) and torch.equal(one["adv"][0], two["adv"][0])
    assert_close_metrics(one["metrics"], two["metrics"], steps=(1, 2))
    assert_close_weights(one["params"], two["params"])


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_checkpoint_saved_at_two_ranks_resumes_at_any_world_size(runs, tmp_path, world):
    """At W = 2 the resumed run is also asked to stop by rank 0's callback after its first step: both ranks agree at
    that step boundary, stop on the same step and leave a complete checkpoint."""
    source = runs["dppo-w2"]
    out = tmp_path / f"resume-w{world}"
    shutil.copytree(source["root"] / "run", out / "run")
    shutil.rmtree(out / "run" / "checkpoints" / "step_000003")  # as if the attempt died during step 3
    config = get_preset("shapes-dppo").with_overrides({**CASES["dppo"], "steps": 3 if world == 1 else 6})
    resumed = run_ok(config, out, world, **({"STOP_AFTER": "1"} if world == 2 else {}))
    assert sorted(resumed["metrics"]) == [3]  # it continued from step 2
    assert_close_metrics(source["metrics"], resumed["metrics"], steps=(3,))
    assert_close_weights(source["params"], resumed["params"])
    if world == 2:  # same world size: the same computation, bit for bit; then the agreed stop
        assert resumed["metrics"][3] == source["metrics"][3]
        assert all(torch.equal(source["params"][n], resumed["params"][n]) for n in source["params"])
        ranks = [result(out, r) for r in (0, 1)]
        assert [r["steps_completed"] for r in ranks] == [3, 3] and all(r["stopped"] for r in ranks)
        state = json.loads((out / "run" / "checkpoints" / "step_000003" / "state.json").read_text())
        assert state["step"] == 3


@pytest.mark.slow
def test_a_hung_rank_ends_the_attempt_within_the_collective_timeout(tmp_path):
    config = get_preset("shapes-dppo").with_overrides({**CASES["dppo"], "steps": 5, "eval_every": 0})
    start = time.monotonic()
    proc = launch(config, tmp_path, 2, HANG_RANK="1", HANG_STEP="2", FLOWDPPO_COLLECTIVE_TIMEOUT_S="5")
    assert proc.returncode != 0
    assert time.monotonic() - start < 120  # startup + 1 step + the 5 s timeout, then torchrun stops the group
    assert "imeout" in proc.stderr or "timed out" in proc.stderr.lower(), proc.stderr[-3000:]


def test_world_size_must_divide_the_prompts_and_the_minibatch():
    with pytest.raises(ValidationError, match="num_processes=3 must divide prompts_per_step=16"):
        TrainConfig(num_processes=3)
    with pytest.raises(ValidationError, match="num_processes=4 must divide the minibatch size 2"):
        TrainConfig(num_processes=4, prompts_per_step=4, group_size=2, num_minibatches=4)


def test_config_and_process_group_must_agree(tmp_path):
    with pytest.raises(ValueError, match="num_processes=2 but this run has 1 ranks"):
        train(TrainConfig(num_processes=2, steps=1), out_dir=tmp_path, ranks=Ranks())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_nccl_without_a_gpu_is_a_clear_error(monkeypatch, capsys, tmp_path):
    with pytest.raises(DistributedSetupError, match="no usable GPU"):
        check_backend("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedSetupError, match="--device cpu for gloo"):
        init_from_env("cuda")  # refused before any rendezvous: never a hang
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    from flowdppo import main

    assert main(["train", "shapes-dppo", "--nproc-per-node", "2", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no usable GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_ranks_through_torchrun(tmp_path):
    # `flowdppo train --nproc-per-node 2`: torchrun --standalone underneath; rank 0 alone writes the folder
    out = tmp_path / "run"
    overrides = ["prompts_per_step=2", "group_size=2", "num_minibatches=1", "eval_every=0", "sample_every=0"]
    cmd = [sys.executable, "-m", "flowdppo", "train", "shapes-dppo", "--steps", "2", "--nproc-per-node", "2"]
    cmd += [arg for pair in overrides for arg in ("--set", pair)] + ["--out", str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert json.loads((out / "config.json").read_text())["num_processes"] == 2
    assert (out / "checkpoints" / "step_000002" / "state.json").is_file()
