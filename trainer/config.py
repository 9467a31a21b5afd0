"""One validated config object per run: every knob of spec/algorithm.md, the same object in CLI, REST and dashboard."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.loss_registry import LOSSES
from trainer.loss_rules import check_loss_fields
from trainer.losses import DPPO_MASKS
from trainer.models.families import FAMILIES
from trainer.prompts import check_prompt_spec
from trainer.rewards.registry import check_reward_options
from trainer.sampling import SDE_KINDS, TRANSITIONS
from trainer.text import JsonDict, Text, check_text
from trainer.trackers import TrackerSpec

LossName = Literal[tuple(LOSSES)]  # the loss registry's names: "dppo", "clip", "none"
DppoMask = Literal[DPPO_MASKS]  # spec §9: "asymmetric", "symmetric", "first_order"
SamplerName = Literal[SDE_KINDS]  # the sampler registry's stochastic kinds: "flow_sde", "cps"
# "shapes:<split>" or "file:<path>"
PromptSpec = Annotated[str, Field(max_length=1000), AfterValidator(check_text), AfterValidator(check_prompt_spec)]
MAX_SEED = 2**31 - 1  # a seed plus a sample index fits every seed column (samples.seed is 64-bit)
ModelFamily = Literal[tuple(FAMILIES)]  # the family table's names: "builtin", "sd3", "flux"


def _form_group(group: str) -> Callable[..., Any]:
    """`Field` of one TrainConfig section: the group goes into the field's JSON schema ("group"), which the dashboard's
    New-run form reads to lay out its sections (ui/submit.py)."""
    return functools.partial(Field, json_schema_extra={"group": group})


RunField = _form_group("run")
ModelField = _form_group("model")
PromptsField = _form_group("prompts")
SamplingField = _form_group("sampling")
RolloutField = _form_group("rollout and rewards")
LossField = _form_group("loss")
OptimisationField = _form_group("optimisation")
EvaluationField = _form_group("evaluation, samples, checkpoints")
TrackersField = _form_group("trackers")


class RewardSpec(BaseModel):
    """One reward term. Weight 0 means computed and logged but not trained on (a reward-hacking monitor)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Text(100) = Field(description="Registered reward name, e.g. 'shapes', 'jpeg_compressibility', 'pickscore'.")
    weight: float = Field(1.0, ge=0.0, description="Weight in the aggregate (spec §5). 0 = monitor only.")
    options: JsonDict = Field(
        default_factory=dict,
        max_length=32,
        description="Reward-specific options, e.g. {'path': '/models/pickscore'} or {'url': ...}.",
    )

    @model_validator(mode="after")
    def _check_name_and_options(self) -> RewardSpec:
        check_reward_options(self.name, self.options)  # paths are checked where the reward is built
        return self


class TrainConfig(BaseModel):
    """Every knob of a training run (spec/algorithm.md). Unknown keys and out-of-range values are refused."""

    # allow_inf_nan=False: NaN, Infinity and 1e400 (inf once parsed) are refused in every float field
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --- run ---
    seed: int = RunField(
        0, ge=0, le=MAX_SEED, description="Seeds the SDE-window draws, the initial noise and the minibatch shuffles."
    )
    steps: int = RunField(100, ge=1, le=1_000_000, description="Number of RL iterations (rollout + update).")
    num_processes: int = RunField(
        1,
        ge=1,
        le=1024,
        description="W: data-parallel ranks (GPUs) of the run; each samples P/W whole groups (spec §12).",
    )

    # --- model ---
    model: ModelFamily = ModelField(
        "builtin", description="Model family: the built-in tiny model, SD3/SD3.5 or FLUX.1."
    )
    model_path: Text(1000) | None = ModelField(
        None, description="Local directory (or hub id when online) of the base model; builtin: None = shipped base."
    )
    resolution: int = ModelField(32, ge=16, le=2048, description="Image side in pixels (builtin: 32).")
    lora_rank: int | None = ModelField(
        None, ge=0, le=1024, description="LoRA rank; 0 = full fine-tuning; None = builtin 0, SD3 32 (spec §6), FLUX 64"
    )
    lora_alpha: float | None = ModelField(None, gt=0, description="LoRA alpha; None = 2 x rank (spec §6: 64 for SD3).")
    lora_target_modules: list[Text(200)] | None = ModelField(
        None, max_length=64, description="LoRA target modules; None = the family default."
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = ModelField(
        "no", description="Model weights/activations dtype; transition math stays float32 (spec §2)."
    )
    gradient_checkpointing: bool = ModelField(False, description="Trade compute for memory on large transformers.")

    # --- prompts ---
    train_prompts: PromptSpec = PromptsField(
        "shapes:train", description="Prompt set: 'shapes:train' or 'file:/path/prompts.txt'."
    )
    eval_prompts: PromptSpec = PromptsField("shapes:heldout", description="Held-out prompt set for evaluation.")

    # --- sampling (spec §1-2) ---
    sampler: SamplerName = SamplingField(
        "flow_sde", description="Per-step Gaussian policy: flow_sde (Flow-GRPO) or cps."
    )
    noise_level: float | None = SamplingField(
        None, gt=0.0, le=2.0, description="Noise level a; None = 0.7 for flow_sde, 0.8 for cps (spec §6)."
    )
    num_steps: int = SamplingField(
        10, ge=2, le=1000, description="Sampling steps during training rollouts (spec §6: 10)."
    )
    shift: float = SamplingField(3.0, gt=0.0, description="Timestep shift of the flow-matching schedule (SD3: 3).")
    sde_steps: int | Literal["all"] = SamplingField(
        3, description="Stochastic (trained) steps per rollout, or 'all': every step, sde_window ignored (spec §1)."
    )
    sde_window: tuple[float, float] = SamplingField(
        (0.0, 0.5), description="Fraction [start, end) of the schedule the SDE steps are drawn from (spec §1)."
    )
    guidance_scale: float = SamplingField(
        1.0, ge=1.0, le=30.0, description="CFG during training rollouts (spec §6: 1.0)."
    )
    shared_initial_noise: bool = SamplingField(
        False, description="One initial noise per group instead of per sample (§5)."
    )
    logprob_reduction: Literal["mean", "sum"] = SamplingField(
        "mean", description="Reduction of log-prob and KL (spec §2-3)."
    )

    # --- rollout and rewards (spec §5) ---
    prompts_per_step: int = RolloutField(16, ge=1, le=4096, description="P: distinct prompts per rollout.")
    group_size: int = RolloutField(8, ge=2, le=512, description="G: samples per prompt.")
    rewards: list[RewardSpec] = RolloutField(
        default_factory=lambda: [RewardSpec(name="shapes")], min_length=1, description="Reward terms and weights."
    )
    reward_aggregation: Literal["sum", "gdpo"] | None = RolloutField(
        None, description="Multi-reward aggregation; None = gdpo when several rewards are trained on, else sum."
    )
    advantage_std: Literal["global", "group"] = RolloutField(
        "global", description="Std used to standardise (spec §5)."
    )
    advantage_clip: float | Literal["auto"] | None = RolloutField(
        "auto", description="Clip advantages to [-c, c]; 'auto' = off for dppo/none, 5 for clip (spec §4)."
    )

    # --- loss (spec §3-4, §9-11) ---
    loss: LossName = LossField(
        "dppo",
        description="dppo (divergence mask), clip (Flow-GRPO ratio clip), none, grpo_guard (spec §10) or nft "
        "(Diffusion-NFT, spec §11).",
    )
    delta: float = LossField(1e-5, gt=0.0, description="dppo KL threshold delta (spec §4: 1e-5 with mean reduction).")
    dppo_mask: DppoMask = LossField(
        "asymmetric", description="dppo mask: asymmetric (Eq. 18), symmetric (ablation) or first_order (App. E); §9."
    )
    clip_range: float | None = LossField(
        None, gt=0.0, lt=1.0, description="Ratio clip eps; None = 1e-4 for clip (spec §4), 2e-6 for grpo_guard (§10)."
    )
    guard_reweight: bool = LossField(True, description="grpo_guard: weight each step by 1/(-dt) (spec §10).")
    beta: float = LossField(
        0.0, ge=0.0, description="Weight of KL(pi_theta || pi_ref) to the frozen base (spec §4); nft: of (v - v_ref)²."
    )
    nft_beta: float = LossField(1.0, gt=0.0, le=10.0, description="nft: the policy mix beta of v+/v- (spec §11: 1).")
    nft_timesteps: int = LossField(
        9, ge=1, le=1000, description="nft: grid noise levels trained per sample, of num_steps (spec §11: 9 of 10)."
    )

    # --- optimisation (spec §6) ---
    learning_rate: float = OptimisationField(3e-4, gt=0.0, le=1.0, description="AdamW learning rate (spec §6: 3e-4).")
    adam_betas: tuple[float, float] = OptimisationField((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = OptimisationField(1e-4, ge=0.0, description="AdamW weight decay.")
    adam_eps: float = OptimisationField(1e-8, gt=0.0, description="AdamW epsilon.")
    inner_epochs: int = OptimisationField(1, ge=1, le=64, description="I: passes over each rollout (spec §6).")
    num_minibatches: int = OptimisationField(
        2, ge=1, le=1024, description="M: optimizer steps per inner epoch (spec §6)."
    )
    micro_batch_size: int | None = OptimisationField(
        None,
        ge=1,
        le=1_000_000,
        description="Samples per forward/backward chunk (gradient accumulation); None = whole minibatch.",
    )
    max_grad_norm: float = OptimisationField(1.0, gt=0.0, description="Gradient norm clip (spec §6: 1.0).")
    ema_decay: float | None = OptimisationField(
        None, gt=0.0, lt=1.0, description="EMA of trainable weights for evaluation."
    )

    # --- evaluation, samples, checkpoints ---
    eval_every: int = EvaluationField(
        10, ge=0, le=1_000_000, description="Evaluate on held-out prompts every N steps (0 = never)."
    )
    eval_num_samples: int = EvaluationField(
        36, ge=1, le=10_000, description="Held-out images per evaluation: the prompt set cycled, seed = index."
    )
    eval_num_steps: int = EvaluationField(40, ge=2, le=1000, description="ODE steps at evaluation (spec §6: 40).")
    eval_guidance_scale: float | None = EvaluationField(
        None, ge=1.0, le=30.0, description="CFG at evaluation; None = builtin 1.0, SD3.5 4.5, FLUX 3.5."
    )
    sample_every: int = EvaluationField(
        10, ge=0, le=1_000_000, description="Log sample images every N steps (0 = never)."
    )
    num_logged_samples: int = EvaluationField(
        8, ge=0, le=256, description="Images logged each time (fixed prompts and seeds)."
    )
    checkpoint_every: int = EvaluationField(
        10, ge=0, le=1_000_000, description="Write a resumable checkpoint every N steps (0 = end only)."
    )

    # --- trackers (docs/trackers.md) ---
    trackers: list[TrackerSpec] = TrackersField(
        default_factory=list,
        max_length=8,
        description="Mirror metrics and samples to TensorBoard (a folder inside the run's output) or MLflow.",
    )

    @property
    def effective_noise_level(self) -> float:
        if self.noise_level is not None:
            return self.noise_level
        return TRANSITIONS[self.sampler].default_noise_level  # spec §6: 0.7 flow_sde, 0.8 cps

    @property
    def effective_clip_range(self) -> float | None:
        return self.clip_range if self.clip_range is not None else LOSSES[self.loss].clip_range

    @property
    def effective_advantage_clip(self) -> float | None:
        if self.advantage_clip == "auto":
            return LOSSES[self.loss].advantage_clip
        return self.advantage_clip

    @property
    def effective_lora_rank(self) -> int:
        return self.lora_rank if self.lora_rank is not None else FAMILIES[self.model].lora_rank

    @property
    def effective_lora_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.effective_lora_rank

    @property
    def effective_eval_guidance_scale(self) -> float:
        if self.eval_guidance_scale is not None:
            return self.eval_guidance_scale
        return FAMILIES[self.model].eval_guidance

    @property
    def trained_rewards(self) -> list[RewardSpec]:
        return [r for r in self.rewards if r.weight > 0]

    @property
    def effective_reward_aggregation(self) -> Literal["sum", "gdpo"]:
        if self.reward_aggregation is not None:
            return self.reward_aggregation
        return "gdpo" if len(self.trained_rewards) > 1 else "sum"

    @property
    def rollout_batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def minibatch_size(self) -> int:
        return self.rollout_batch_size // self.num_minibatches

    @property
    def sde_window_steps(self) -> range:
        """Step indices the SDE steps are drawn from (spec §1: by default the first half; 'all': every step).

        cps's last step has std 0 (spec §2): it is an ODE step, so it is never a candidate.
        """
        last = self.num_steps - 1 if self.sampler == "cps" else self.num_steps
        if self.sde_steps == "all":
            return range(last)
        lo, hi = self.sde_window
        return range(int(lo * self.num_steps), min(int(hi * self.num_steps + 0.5), last))

    @property
    def num_sde_steps(self) -> int:
        return len(self.sde_window_steps) if self.sde_steps == "all" else self.sde_steps

    @field_validator("sde_window")
    @classmethod
    def _check_window(cls, window: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= window[0] < window[1] <= 1.0:
            raise ValueError(f"must satisfy 0 <= start < end <= 1, got {window}")
        return window

    @field_validator("adam_betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 < b < 1.0 for b in betas):
            raise ValueError(f"both betas must lie in (0, 1), got {betas}")
        return betas

    @field_validator("advantage_clip")
    @classmethod
    def _check_advantage_clip(cls, clip: float | str | None) -> float | str | None:
        if isinstance(clip, float) and clip <= 0:
            raise ValueError(f"must be > 0, 'auto' or null, got {clip}")
        return clip

    @model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        if self.sde_steps != "all":
            window = len(self.sde_window_steps)
            if not 1 <= self.sde_steps <= window:
                raise ValueError(
                    f"sde_steps={self.sde_steps} must be between 1 and the {window} steps of sde_window="
                    f"{self.sde_window} at num_steps={self.num_steps}"
                    + (" (cps's last step is deterministic)" if self.sampler == "cps" else "")
                )
        if self.sampler == "cps" and self.noise_level is not None and self.noise_level > 1.0:
            raise ValueError(
                f"noise_level={self.noise_level} must be <= 1 for cps (std = sigma_next·sin(a·pi/2) peaks at a = 1)"
            )
        if self.rollout_batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide prompts_per_step*group_size="
                f"{self.rollout_batch_size}"
            )
        if self.micro_batch_size is not None and self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} must divide the minibatch size {self.minibatch_size}"
            )
        if not self.trained_rewards:
            raise ValueError("rewards: at least one reward must have weight > 0")
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rewards: each reward name may appear once, got {names}")
        family = FAMILIES[self.model]
        if family.needs_model_path and not self.model_path:
            raise ValueError(f"model_path is required for model={self.model!r} (a local directory with the weights)")
        low, high = family.resolutions
        if not low <= self.resolution <= high:
            allowed = str(low) if low == high else f"{low} to {high}"
            raise ValueError(f"resolution={self.resolution}: model={self.model!r} generates {allowed} pixels")
        if self.rollout_batch_size > family.max_rollout_batch:
            raise ValueError(
                f"prompts_per_step*group_size={self.prompts_per_step}*{self.group_size}={self.rollout_batch_size}: "
                f"a rollout of model={self.model!r} holds at most {family.max_rollout_batch} samples"
            )
        check_loss_fields(self)  # spec §9-11: a knob of another method, or one this loss ignores
        return self

    @model_validator(mode="after")
    def _check_ranks(self) -> TrainConfig:
        """Spec §12: whole groups per rank, and an equal share of every minibatch per rank."""
        W = self.num_processes
        if self.prompts_per_step % W:
            raise ValueError(
                f"num_processes={W} must divide prompts_per_step={self.prompts_per_step} "
                "(each rank samples whole groups)"
            )
        if self.minibatch_size % W:
            raise ValueError(
                f"num_processes={W} must divide the minibatch size {self.minibatch_size} "
                f"(prompts_per_step*group_size/num_minibatches: each rank takes an equal share)"
            )
        return self

    # --- serialisation ---
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a JSON or YAML file."""
        text = Path(path).read_text()
        data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
        return cls.model_validate(data)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A new config with dotted-key overrides applied, e.g. {"loss": "clip", "rewards.0.weight": 0.5}."""
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return type(self).model_validate(data)


class EvalConfig(BaseModel):
    """An evaluation job: a checkpoint (or the base model) on fixed prompts with fixed seeds, ODE sampler."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    train: TrainConfig = Field(description="The run's training config (model, LoRA layout, rewards).")
    prompts: PromptSpec | None = Field(None, description="Prompt set; None = the run's eval_prompts.")
    num_prompts: int = Field(32, ge=1, le=10_000, description="Prompts taken from the set, in order.")
    samples_per_prompt: int = Field(1, ge=1, le=64, description="Seeds per prompt: seed, seed+1, ...")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="First seed of the fixed evaluation noise.")
    num_steps: int = Field(40, ge=2, le=1000, description="ODE steps (spec §6: 40).")
    guidance_scale: float | None = Field(
        None, ge=1.0, le=30.0, description="CFG scale; None = the run's eval_guidance_scale (SD3.5: 4.5)."
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Images per forward pass.")
    use_ema: bool = Field(True, description="Use the EMA weights when the checkpoint has them.")

    @property
    def prompt_set(self) -> str:
        return self.prompts or self.train.eval_prompts

    @property
    def effective_guidance_scale(self) -> float:
        return self.guidance_scale if self.guidance_scale is not None else self.train.effective_eval_guidance_scale


class OverrideError(ValueError):
    """A dotted override that names no place in the config (e.g. `steps.a`: steps is a number, not an object)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"override {key!r}: {problem}")
        self.key = key


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise OverrideError(key, f"{where} is a list of {len(node)}; {part!r} is not one of its indices")
            part = int(part)
        elif not isinstance(node, dict):
            raise OverrideError(key, f"{where} is {type(node).__name__} {node!r}, not an object with field {part!r}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse CLI `key=value` pairs; values are YAML scalars/lists (so `true`, `1e-4`, `[0.0, 0.5]` work)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, naming the field: 'loss: Input should be 'dppo', 'clip' or 'none' (got 'ppo')'."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        lines.append(f"{field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
