"""Training-loop invariants (TRL style): equivalent set-ups give the same per-step trajectory."""

import json
import shutil

import pytest
import torch

from trainer.callbacks import JsonlCallback, NullCallback
from trainer.metrics import TIMING_PREFIXES
from trainer.models.builtin import load_builtin
from trainer.presets import get_preset
from trainer.prompts import load_prompts
from trainer.rollout import KL_REF_MONITOR_SAMPLES, collect_rollout
from trainer.train import _loss_backward, train

TINY = {
    "steps": 3,
    "prompts_per_step": 4,
    "group_size": 4,
    "eval_every": 0,
    "sample_every": 0,
    "checkpoint_every": 1,
    "learning_rate": 1e-3,
}


def tiny_config(**overrides):
    return get_preset("shapes-dppo").with_overrides({**TINY, **overrides})


class Recorder(NullCallback):
    def __init__(self, stop_after=None):
        self.metrics, self.checkpoints, self.samples, self.stop_after = {}, [], {}, stop_after

    def on_metrics(self, step, metrics):
        self.metrics[step] = {k: v for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}

    def on_samples(self, step, samples):
        self.samples[step] = samples

    def on_checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def should_stop(self):
        return self.stop_after is not None and len([s for s in self.metrics if s > 0]) >= self.stop_after


def test_every_trainable_parameter_changes(tmp_path):
    config = tiny_config(steps=1)
    model = load_builtin(config)
    before = model.trainable_state_dict()
    train(config, out_dir=tmp_path, model=model)
    after = model.trainable_state_dict()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"


def test_lora_initialisation_follows_the_run_seed():
    # Same seed, same adapter, whatever the process's global RNG did in between; another seed, another adapter.
    first = load_builtin(tiny_config(lora_rank=4, seed=1)).trainable_state_dict()
    torch.rand(10)
    again = load_builtin(tiny_config(lora_rank=4, seed=1)).trainable_state_dict()
    other = load_builtin(tiny_config(lora_rank=4, seed=2)).trainable_state_dict()
    lora_a = [n for n in first if "lora_A" in n]
    assert lora_a and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in lora_a)


@pytest.mark.parametrize("preset", ["shapes-dppo", "shapes-clip", "shapes-cps-dppo"])
def test_first_step_after_rollout_has_ratio_one_and_kl_zero(tmp_path, preset):
    rec = Recorder()
    train(get_preset(preset).with_overrides({**TINY, "steps": 2}), rec, out_dir=tmp_path)
    for step in (1, 2):
        assert rec.metrics[step]["selftest/ratio_dev"] < 1e-6
        assert rec.metrics[step]["selftest/kl_dev"] < 1e-6


@pytest.mark.parametrize(("loss", "share"), [("dppo", "mask/fraction"), ("clip", "clip/fraction")])
def test_reports_every_spec_metric(tmp_path, loss, share):
    seen = {}

    class Raw(NullCallback):  # every key as reported, timings included
        def on_metrics(self, step, metrics):
            seen[step] = metrics

    rewards = [{"name": "shapes"}, {"name": "jpeg_compressibility", "weight": 0}]
    train(tiny_config(steps=1, loss=loss, rewards=rewards), Raw(), out_dir=tmp_path)
    expected = {
        "reward/shapes/mean",
        "reward/shapes/std",
        "reward/jpeg_compressibility/mean",
        "reward/total/mean",
        "adv/abs_mean",
        "zero_std_fraction",
        "ratio/mean",
        "ratio/min",
        "ratio/max",
        "approx_kl",
        "kl_old/mean",
        "kl_old/max",
        "kl_ref/mean",
        share,
        "loss/policy",
        "loss/total",
        "grad_norm",
        "lr",
        "selftest/ratio_dev",
        "selftest/kl_dev",
        "time/rollout_s",
        "time/reward_s",
        "time/train_s",
        "throughput/images_per_s",
    }
    if loss == "dppo":
        expected |= {"mask/pos_fraction", "mask/neg_fraction"}
    assert expected <= set(seen[1]), expected - set(seen[1])


def test_same_seed_same_run_and_resume_equals_uninterrupted(tmp_path):
    full, again, first, second = Recorder(), Recorder(), Recorder(), Recorder()
    train(tiny_config(steps=4), full, out_dir=tmp_path / "full")
    train(tiny_config(steps=4), again, out_dir=tmp_path / "again")
    assert full.metrics == again.metrics
    # Interrupted after 2 steps, then resumed from the checkpoint in the same folder.
    train(tiny_config(steps=2), first, out_dir=tmp_path / "resumed")
    train(tiny_config(steps=4), second, out_dir=tmp_path / "resumed")
    assert sorted(second.metrics) == [3, 4]
    assert {**first.metrics, **second.metrics} == full.metrics  # bit for bit on CPU


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big, micro = Recorder(), Recorder()
    train(tiny_config(steps=1), big, out_dir=tmp_path / "a")
    train(tiny_config(steps=1, micro_batch_size=2), micro, out_dir=tmp_path / "b")
    # Chunked rollouts sample what the whole batch samples (same noise; up to the matmul's batch-size rounding).
    assert micro.metrics[1]["reward/total/mean"] == pytest.approx(big.metrics[1]["reward/total/mean"], abs=1e-5)
    assert micro.metrics[1]["loss/policy"] == pytest.approx(big.metrics[1]["loss/policy"], abs=1e-5)
    # And the accumulated gradient equals the one-batch gradient (Adam would amplify rounding in the weights).
    config = tiny_config(prompts_per_step=8)  # B = 32 > KL_REF_MONITOR_SAMPLES
    model = load_builtin(config)
    prompts, sigmas = load_prompts(config.train_prompts), model.sigmas(config.num_steps)
    reference_rows = []
    policy_velocity = model.velocity

    def spy(x, *args, **kwargs):
        if model._use_reference:
            reference_rows.append(x.shape[0])
        return policy_velocity(x, *args, **kwargs)

    model.velocity = spy
    rollout = collect_rollout(model, config, prompts, sigmas, step=1)
    del model.velocity
    # With beta = 0 the drift monitor runs pi_ref on KL_REF_MONITOR_SAMPLES rows only, not on the whole batch.
    assert reference_rows == [KL_REF_MONITOR_SAMPLES] * config.num_sde_steps
    assert rollout.traj.mean_ref.shape[0] == KL_REF_MONITOR_SAMPLES
    embeds = model.encode_prompts(rollout.prompts)
    adv = torch.linspace(-1, 1, len(rollout.prompts))
    rows = torch.arange(8)
    grads = []
    for chunks in ([rows], rows.split(2)):
        for p in model.trainable_parameters():
            p.grad = None
        for chunk in chunks:
            _loss_backward(model, config, rollout, embeds, adv, chunk, scale=len(chunk) / len(rows))
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_should_stop_ends_within_one_step_and_checkpoints(tmp_path):
    rec = Recorder(stop_after=1)
    result = train(tiny_config(steps=5, checkpoint_every=0), rec, out_dir=tmp_path)
    assert result.stopped and result.steps_completed == 1
    assert [s for s, _ in rec.checkpoints] == [1]


def test_jsonl_callback_and_samples(tmp_path):
    config = tiny_config(
        steps=1, sample_every=1, num_logged_samples=3, eval_every=1, eval_num_samples=4, eval_num_steps=4
    )
    rec = Recorder()
    train(config, JsonlCallback(tmp_path), out_dir=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1]
    assert "eval/reward/total/mean" in lines[0] and "reward/total/mean" in lines[1]
    index = json.loads((tmp_path / "samples" / "step_000001" / "index.json").read_text())
    assert [s["seed"] for s in index] == [0, 1, 2] and "shapes" in index[0]["rewards"]
    train(config, rec, out_dir=tmp_path / "again")
    assert rec.samples[1][0].image.shape == (32, 32, 3) and rec.samples[1][0].image.dtype.name == "uint8"


def test_jsonl_has_each_step_once_after_a_crash_between_checkpoints(tmp_path):
    config = tiny_config(steps=3, checkpoint_every=2)
    train(config, JsonlCallback(tmp_path), out_dir=tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step_000003")  # the crash came after step 3's metrics, before its save
    train(config, JsonlCallback(tmp_path), out_dir=tmp_path)  # resumes at step 2 and replays step 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_short_dppo_run_raises_the_heldout_verifier_reward(tmp_path):
    # 10 steps: the held-out reward is up by about 0.18 by then (measured), 3.6x the margin
    rec = Recorder()
    config = get_preset("shapes-dppo").with_overrides(
        {"steps": 10, "eval_every": 10, "sample_every": 0, "checkpoint_every": 0}
    )
    train(config, rec, out_dir=tmp_path)
    base, final = rec.metrics[0]["eval/reward/total/mean"], rec.metrics[10]["eval/reward/total/mean"]
    assert final > base + 0.05, (base, final)
