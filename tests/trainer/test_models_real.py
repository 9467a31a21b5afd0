"""SD3 / FLUX adapters on tiny random pipelines (CPU, no downloads): conventions, LoRA, reference, training, reload."""

import numpy as np
import pytest
import torch

from trainer.callbacks import NullCallback
from trainer.config import TrainConfig
from trainer.models.flux import FluxModel, pack_latents, unpack_latents
from trainer.models.lora import save_lora
from trainer.models.sd3 import SD3Model
from trainer.models.tiny import RESOLUTION, tiny_flux_pipeline, tiny_sd3_pipeline
from trainer.sampling import sample_ode, sample_trajectory

SEQ = 16  # T5 tokens per prompt: keeps the tiny models tiny
FAMILIES = {
    "sd3": (tiny_sd3_pipeline, SD3Model.load),
    "flux": (tiny_flux_pipeline, FluxModel.load),
}
PROMPTS = ["a red circle", "a blue square", "a green circle"]


def make_config(family, **overrides):
    base = dict(model=family, model_path="/unused", resolution=RESOLUTION, lora_rank=4, lora_alpha=8.0)
    return TrainConfig(**{**base, **overrides})


def make_model(family, seed=0, **overrides):
    build, load = FAMILIES[family]
    return load(make_config(family, **overrides), "cpu", pipeline=build(seed), max_sequence_length=SEQ)


def randomize_lora(model, seed=1, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def base_velocity(model, x, sigma, embeds):
    """The bare transformer of a freshly built pipeline (same seed): the frozen base policy by construction."""
    fresh = FAMILIES[model.family][0](0).transformer
    with torch.no_grad():
        return model._forward(fresh, x, sigma, embeds, 1.0).float()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ode_sampling_matches_the_diffusers_pipeline(family, guidance):
    # The promise: velocity() follows the pipeline's timestep, packing, guidance and VAE conventions exactly.
    build, _ = FAMILIES[family]
    pipe = build(0)
    model = make_model(family, lora_rank=0)
    steps = 4
    noise = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    embeds = model.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        ours = model.decode(
            sample_ode(lambda x, s: model.velocity(x, s, embeds, guidance), noise, model.sigmas(steps))
        )
    latents = pack_latents(noise) if family == "flux" else noise
    ref = pipe(
        prompt=PROMPTS[:2],
        latents=latents,
        sigmas=np.linspace(1.0, 1.0 / steps, steps),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=SEQ,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_logprobs(family):
    model = make_model(family)
    embeds = model.encode_prompts(PROMPTS[:2])
    sigmas = model.sigmas(4)
    noise = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    traj = sample_trajectory(
        lambda x, s: model.velocity(x, s, embeds),
        noise,
        sigmas,
        [0, 1],
        "flow_sde",
        0.7,
        torch.randn(2, 2, *noise.shape[1:]),
    )
    assert traj.x.shape == (2, 2, *model.sample_shape)
    assert traj.logp_old.shape == (2, 2) and torch.isfinite(traj.logp_old).all()
    images = model.decode(traj.final)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and 0 <= images.min() <= images.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_is_the_frozen_base_and_lora_comes_back(family):
    model = make_model(family)
    randomize_lora(model)
    embeds = model.encode_prompts(PROMPTS)
    x = torch.randn(3, *model.sample_shape)
    sigma = torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        v_policy = model.velocity(x, sigma, embeds)
        with model.reference():
            v_ref = model.velocity(x, sigma, embeds)
        v_again = model.velocity(x, sigma, embeds)
    torch.testing.assert_close(v_ref, base_velocity(model, x, sigma, embeds))
    assert (v_policy - v_ref).abs().max() > 1e-3  # the adapter does something ...
    torch.testing.assert_close(v_again, v_policy)  # ... and is back after the context
    assert all(p.requires_grad for p in model.trainable_parameters())


def test_full_finetune_reference_keeps_the_initial_weights():
    model = make_model("sd3", lora_rank=0)
    embeds = model.encode_prompts(PROMPTS[:1])
    x, sigma = torch.randn(1, *model.sample_shape), torch.tensor([0.5])
    with torch.no_grad():
        before = model.velocity(x, sigma, embeds)
        for p in model.trainable_parameters():
            p.add_(0.01)
        with model.reference():
            torch.testing.assert_close(model.velocity(x, sigma, embeds), before)
        assert (model.velocity(x, sigma, embeds) - before).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_velocity_is_independent_of_batch_split_and_cfg_is_uncond_plus_scaled_difference(family):
    model = make_model("sd3" if family == "sd3" else "flux")
    if family == "flux":  # true CFG is what a transformer without a guidance embedding does (schnell)
        model = FluxModel.from_pipeline(
            tiny_flux_pipeline(0, guidance_embeds=False), make_config("flux"), "cpu", max_sequence_length=SEQ
        )
    randomize_lora(model)
    embeds = model.encode_prompts(PROMPTS + PROMPTS[:1])
    x = torch.randn(4, *model.sample_shape)
    sigma = torch.tensor([1.0, 0.75, 0.5, 0.1])
    with torch.no_grad():
        whole = model.velocity(x, sigma, embeds, 4.5)
        halves = [
            model.velocity(x[i : i + 2], sigma[i : i + 2], {k: v[i : i + 2] for k, v in embeds.items()}, 4.5)
            for i in (0, 2)
        ]
        cond = model.velocity(x, sigma, embeds)
        empty = model.encode_prompts([""] * 4)
        uncond = model.velocity(x, sigma, empty)
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, uncond + 4.5 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_prompt_cache_encodes_each_prompt_once_and_alone():
    model = make_model("sd3")
    calls = []
    encode = model._encode
    model._encode = lambda prompts, device: calls.append(list(prompts)) or encode(prompts, device)
    first = model.encode_prompts(["a", "b", "a"])
    second = model.encode_prompts(["b", "c"])
    # one prompt per call: an embedding never depends on the prompts it happened to be batched with
    assert calls == [["a"], ["b"], ["c"]]
    torch.testing.assert_close(first["prompt_embeds"][1], second["prompt_embeds"][0])
    model.free_text_encoders()
    model.encode_prompts(["a", "c"])  # cached: fine without encoders
    with pytest.raises(RuntimeError, match="free_text_encoders"):
        model.encode_prompts(["new prompt"])


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = make_model("sd3", gradient_checkpointing=checkpointing)
        randomize_lora(model)
        model.train()
        embeds = model.encode_prompts(PROMPTS[:2])
        x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
        model.velocity(x, torch.tensor([0.7, 0.3]), embeds).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


class Recorder(NullCallback):
    def __init__(self):
        self.metrics = {}

    def on_metrics(self, step, metrics):
        self.metrics[step] = metrics


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3)).cpu()


TRAIN = dict(
    steps=1,
    prompts_per_step=2,
    group_size=2,
    num_steps=4,
    sde_steps=2,
    num_minibatches=2,
    eval_every=0,
    sample_every=0,
    checkpoint_every=0,
    learning_rate=1e-3,
    rewards=[{"name": "shapes"}],
)


@pytest.mark.parametrize(("family", "loss"), [("sd3", "dppo"), ("sd3", "clip"), ("flux", "dppo"), ("flux", "clip")])
def test_one_lora_training_step_then_save_and_reload(tmp_path, family, loss):
    from trainer.train import train  # imported here: the rest of the file needs only the adapters

    config = make_config(family, loss=loss, **TRAIN)
    model = make_model(family, loss=loss, **TRAIN)
    base = {k: v.clone() for k, v in model.transformer.state_dict().items() if "lora_" not in k}
    before = model.trainable_state_dict()
    rec = Recorder()
    train(config, rec, out_dir=tmp_path / "run", model=model, rewards={"shapes": brightness})

    # First optimizer step after a rollout: the policy is pi_old, so r = 1 and D = 0 (spec §4 self-test).
    assert rec.metrics[1]["selftest/ratio_dev"] < 1e-5 and rec.metrics[1]["selftest/kl_dev"] < 1e-6
    after = model.trainable_state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no LoRA weight changed"
    frozen = {k: v for k, v in model.transformer.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], frozen[k]) for k in base), "the base weights must stay frozen"

    # The adapter reloads with diffusers' standard API and gives the trained transformer's outputs.
    save_lora(model, tmp_path / "lora")
    pipe = FAMILIES[family][0](0)
    pipe.load_lora_weights(tmp_path / "lora")
    embeds = model.encode_prompts(PROMPTS[:2])
    x, sigma = torch.randn(2, *model.sample_shape), torch.tensor([0.8, 0.4])
    with torch.no_grad():
        trained = model.velocity(x, sigma, embeds)
        reloaded = model._forward(pipe.transformer, x, sigma, embeds, 1.0).float()
    torch.testing.assert_close(reloaded, trained, atol=1e-6, rtol=1e-5)

    # And the trainer's own checkpoint state dict round-trips into a fresh model.
    fresh = make_model(family)
    fresh.load_trainable_state_dict(after)
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, sigma, embeds), trained)


def test_load_from_a_local_directory(tmp_path):
    tiny_sd3_pipeline(0).save_pretrained(tmp_path / "sd3")
    model = SD3Model.load(make_config("sd3", model_path=str(tmp_path / "sd3")), "cpu", max_sequence_length=SEQ)
    assert isinstance(model, SD3Model) and model.sample_shape == (4, 16, 16)
    ref = make_model("sd3")
    embeds = model.encode_prompts(PROMPTS[:1])
    x, sigma = torch.randn(1, *model.sample_shape), torch.tensor([0.5])
    with torch.no_grad():
        torch.testing.assert_close(
            model.velocity(x, sigma, embeds), ref.velocity(x, sigma, ref.encode_prompts(PROMPTS[:1]))
        )


def test_missing_weights_say_how_to_provide_them(monkeypatch):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download stabilityai"):
        SD3Model.load(make_config("sd3", model_path="/nonexistent/sd35"), "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline.*model_path to a local directory"):
        FluxModel.load(make_config("flux", model_path="nobody/no-such-flux"), "cpu")


def test_flux_packing_and_resolution_dependent_shift():
    x = torch.randn(2, 4, 16, 16)
    assert torch.equal(unpack_latents(pack_latents(x), 16, 16), x)
    model = make_model("flux")
    sched = tiny_flux_pipeline(0).scheduler
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=model.scheduler_kwargs()["mu"])
    torch.testing.assert_close(model.sigmas(4), sched.sigmas.float())
    assert model.scheduler_kwargs()["mu"] == pytest.approx(0.5 + (64 - 256) * (0.65 / 3840))


def test_bad_lora_targets_and_resolution_are_refused():
    with pytest.raises(ValueError, match="match no module"):
        make_model("sd3", lora_target_modules=["attn.to_qq"])
    with pytest.raises(ValueError, match="resolution=34 must be a multiple of 4"):
        make_model("sd3", resolution=34)


@pytest.mark.parametrize("placement", ["offload", "cpu"])
def test_text_encoder_placements_give_the_same_embeddings(placement, monkeypatch):
    from trainer.models import diffusers_model

    build, load = FAMILIES["sd3"]
    moved = load(make_config("sd3"), "cpu", pipeline=build(0), max_sequence_length=SEQ, text_encoders=placement)
    expected = make_model("sd3").encode_prompts(PROMPTS)
    placed = []
    monkeypatch.setattr(diffusers_model, "_place", lambda module, *args: placed.append(module) or module.to(*args))
    got = moved.encode_prompts(PROMPTS)
    # "offload" brings each encoder to the device once for the whole batch of new prompts, not once per prompt
    assert len(placed) == (len(moved._text_encoder_modules()) if placement == "offload" else 0)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    with pytest.raises(ValueError, match="text_encoders must be one of"):
        load(make_config("sd3"), "cpu", pipeline=build(0), text_encoders="gpu")


def test_checkpoints_carry_a_diffusers_loadable_adapter(tmp_path):
    # Every checkpoint of an SD3 LoRA run holds lora/, which a fresh pipeline loads with load_lora_weights.
    from trainer.train import train

    model = make_model("sd3")
    config = make_config("sd3").with_overrides(
        {
            "steps": 1,
            "prompts_per_step": 2,
            "group_size": 2,
            "num_steps": 4,
            "sde_window": (0.0, 1.0),
            "sde_steps": 1,
            "eval_every": 0,
            "sample_every": 0,
            "checkpoint_every": 1,
            "train_prompts": "shapes:train",
        }
    )
    train(config, out_dir=tmp_path, model=model)
    assert (tmp_path / "checkpoints" / "step_000001" / "lora" / "pytorch_lora_weights.safetensors").is_file()
