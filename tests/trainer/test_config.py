"""The run config: defaults from the spec, refusal of bad values with the field named, round trips."""

import pytest
import torch
from pydantic import ValidationError

from trainer.config import EvalConfig, TrainConfig, format_validation_error, parse_overrides
from trainer.presets import PRESETS, get_preset
from trainer.rollout import step_generator


def test_spec_defaults():
    c = TrainConfig()
    assert (c.loss, c.delta, c.clip_range, c.beta) == ("dppo", 1e-5, None, 0.0)
    # clip_range None is the loss's own eps (spec §4, §10); a stored config's explicit 1e-4 means the same for clip
    assert TrainConfig(loss="clip").effective_clip_range == TrainConfig(loss="clip", clip_range=1e-4).clip_range
    assert TrainConfig(loss="grpo_guard").effective_clip_range == 2e-6
    assert (c.dppo_mask, c.guard_reweight, c.nft_beta, c.nft_timesteps) == ("asymmetric", True, 1.0, 9)
    assert (c.learning_rate, c.num_minibatches, c.inner_epochs, c.max_grad_norm) == (3e-4, 2, 1, 1.0)
    assert (c.num_steps, c.sde_steps, c.sde_window, c.eval_num_steps, c.guidance_scale) == (10, 3, (0.0, 0.5), 40, 1.0)
    assert c.effective_noise_level == 0.7 and TrainConfig(sampler="cps").effective_noise_level == 0.8
    assert c.effective_advantage_clip is None and TrainConfig(loss="clip").effective_advantage_clip == 5.0
    assert c.logprob_reduction == "mean" and c.effective_reward_aggregation == "sum"
    two = TrainConfig(rewards=[{"name": "shapes"}, {"name": "jpeg_compressibility", "weight": 0.5}])
    assert two.effective_reward_aggregation == "gdpo"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"loss": "ppo"}, "loss"),
        ({"delta": -1}, "delta"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"group_size": 1}, "group_size"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"sampler": "ddim"}, "sampler"),
        ({"logprob_reduction": "max"}, "logprob_reduction"),
        ({"rewards": [{"name": "shapes", "weight": -1}]}, "rewards.0.weight"),
        ({"train_prompts": "shapes:bogus"}, "train_prompts"),
        ({"eval_prompts": "prompts.txt"}, "eval_prompts"),
        ({"sde_window": (0.6, 0.2)}, "sde_window"),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas"),
        ({"advantage_clip": -1.0}, "advantage_clip"),
        ({"rewards": [{"name": "pickscore", "options": {"pth": "/models/p"}}]}, "rewards.0"),  # unknown option
        ({"rewards": [{"name": "shapes"}, {"name": "remote", "weight": 0}]}, "rewards.1"),  # no url
        ({"rewards": [{"name": "nope"}]}, "rewards.0"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(overrides, field):
    with pytest.raises(ValidationError) as err:
        TrainConfig(**overrides)
    assert format_validation_error(err.value).startswith(field)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"num_minibatches": 3}, "num_minibatches=3"),
        ({"sde_steps": 9}, "sde_steps=9"),
        ({"sampler": "cps", "sde_window": (0.9, 1.0), "sde_steps": 1}, "cps's last step is deterministic"),
        ({"sampler": "cps", "noise_level": 1.5}, "noise_level=1.5 must be <= 1 for cps"),
        ({"micro_batch_size": 5}, "micro_batch_size=5"),
        ({"rewards": [{"name": "shapes", "weight": 0}]}, "weight > 0"),
        ({"model": "sd3"}, "model_path is required"),
        ({"rewards": [{"name": "nope"}]}, "unknown reward 'nope'"),
    ],
)
def test_cross_field_rules_name_fields_and_values(overrides, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(")):
        TrainConfig(**overrides)


def test_json_yaml_and_overrides_round_trip(tmp_path):
    c = get_preset("shapes-dppo").with_overrides(parse_overrides(["loss=clip", "sde_window=[0.1, 0.6]", "steps=7"]))
    assert (c.loss, c.sde_window, c.steps) == ("clip", (0.1, 0.6), 7)
    (tmp_path / "c.json").write_text(c.to_json())
    assert TrainConfig.from_file(tmp_path / "c.json") == c
    (tmp_path / "c.yaml").write_text("loss: none\nsteps: 3\nrewards:\n  - name: shapes\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").loss == "none"
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["loss"])


def test_presets_differ_only_in_loss_and_sampler():
    base = PRESETS["shapes-dppo"].model_dump()
    for name in ("shapes-clip", "shapes-cps-dppo", "shapes-cps-clip"):
        other = PRESETS[name].model_dump()
        assert {k for k in base if base[k] != other[k]} <= {"loss", "sampler"}
    with pytest.raises(ValueError, match="known presets"):
        get_preset("nope")


def test_family_defaults_for_lora_and_evaluation_guidance():
    builtin, sd3 = TrainConfig(), TrainConfig(model="sd3", model_path="/models/sd35m")
    flux = TrainConfig(model="flux", model_path="/models/flux")
    assert (builtin.effective_lora_rank, builtin.effective_eval_guidance_scale) == (0, 1.0)
    assert (sd3.effective_lora_rank, sd3.effective_lora_alpha, sd3.effective_eval_guidance_scale) == (32, 64.0, 4.5)
    assert (flux.effective_lora_rank, flux.effective_lora_alpha, flux.effective_eval_guidance_scale) == (64, 128, 3.5)
    explicit = TrainConfig(model="sd3", model_path="/m", lora_rank=8, eval_guidance_scale=7.0)
    assert (explicit.effective_lora_rank, explicit.effective_lora_alpha) == (8, 16.0)
    assert EvalConfig(train=explicit).effective_guidance_scale == 7.0
    assert EvalConfig(train=explicit, guidance_scale=2.0).effective_guidance_scale == 2.0


def test_sde_steps_all_covers_the_whole_schedule():
    config = TrainConfig(sde_steps="all", num_steps=6)
    assert config.sde_window_steps == range(6) and config.num_sde_steps == 6
    assert TrainConfig(num_steps=10).sde_window_steps == range(0, 5)  # default: the first half (spec §1)
    # cps's last step has std 0 (spec §2): never drawn, so every drawn step is trained
    cps = TrainConfig(sampler="cps", sde_steps="all", num_steps=6)
    assert cps.sde_window_steps == range(5) and cps.num_sde_steps == 5
    assert TrainConfig(sampler="cps", sde_window=(0.5, 1.0), sde_steps=4).sde_window_steps == range(5, 9)


def test_step_streams_never_coincide():
    # Each (seed, step, purpose) has its own stream: the 2nd epoch's shuffle at step s is not step s+1's rollout.
    first = [torch.randn(4, generator=step_generator(0, s, p)) for s in range(1, 4) for p in (1, 100, 101, 102)]
    assert len({tuple(t.tolist()) for t in first}) == len(first)
    assert torch.equal(
        torch.randn(4, generator=step_generator(3, 7, 1)), torch.randn(4, generator=step_generator(3, 7, 1))
    )


def test_every_field_names_its_form_group():
    # The dashboard lays out its New-run form by these groups (ui/submit.py): a new field declares one.
    missing = [n for n, f in TrainConfig.model_fields.items() if not (f.json_schema_extra or {}).get("group")]
    assert not missing, f"give these TrainConfig fields a <Group>Field(...): {missing}"
    assert TrainConfig.model_json_schema()["properties"]["loss"]["group"] == "loss"
