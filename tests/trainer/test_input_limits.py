"""The trainer's share of issue 14's bad inputs: finite numbers, safe text, dotted overrides, per-family sizes, a
diverged run failing with a clear error, and remote rewards only on allowed hosts with no body in their errors."""

from __future__ import annotations

import math
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from pydantic import ValidationError

from trainer.config import EvalConfig, OverrideError, RewardSpec, TrainConfig
from trainer.hosts import host_allowed, refused_url
from trainer.metrics import check_finite
from trainer.models.families import FAMILIES
from trainer.rewards.remote import HOSTS_ENV, RemoteReward, RemoteRewardError, reward_hosts
from trainer.text import check_json, check_text

NON_FINITE = [math.nan, math.inf, -math.inf]
FLOAT_FIELDS = ["learning_rate", "weight_decay", "beta", "max_grad_norm", "delta", "shift", "adam_eps"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_every_float_field_refuses_non_finite_numbers(field, value):
    # the promise: NaN/Infinity never reach a worker (SQLite once "succeeded" with NaN loss, PostgreSQL 500'd)
    with pytest.raises(ValidationError, match="finite number") as err:
        TrainConfig(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("make", "loc"),
    [
        (lambda: TrainConfig(sde_window=(0.0, math.nan)), ("sde_window", 1)),
        (lambda: TrainConfig(adam_betas=(0.9, math.inf)), ("adam_betas", 1)),
        (lambda: RewardSpec(name="shapes", weight=math.nan), ("weight",)),
        (lambda: EvalConfig(train=TrainConfig(), guidance_scale=math.inf), ("guidance_scale",)),
    ],
)
def test_tuples_rewards_and_eval_configs_refuse_them_too(make, loc):
    with pytest.raises(ValidationError, match="finite number") as err:
        make()
    assert err.value.errors()[0]["loc"] == loc


def test_text_checks_name_the_character():
    assert check_text("ünïcode ✓ 漢字") == "ünïcode ✓ 漢字"
    for bad, what in [("a\x00b", "U+0000"), ("\ud800", "surrogate"), ("line\nbreak", "U+000A")]:
        with pytest.raises(ValueError, match=re.escape(what)):
            check_text(bad)
    with pytest.raises(ValueError, match="at 'k'.*not a finite number"):
        check_json({"k": [1.0, math.nan]})
    with pytest.raises(ValueError, match="deeper than"):
        check_json(_nested(20))


def _nested(depth: int) -> dict:
    node: dict = {}
    for _ in range(depth):
        node = {"a": node}
    return node


@pytest.mark.parametrize(
    "fields",
    [
        {"model_path": "/models/a\x00"},
        {"lora_target_modules": ["to_q\ud800"]},
        {"lora_target_modules": ["x"] * 65},
        {"train_prompts": "file:/" + "a" * 1000},
        {"rewards": [{"name": "shapes", "options": {"k\x00": 1}}]},
        {"rewards": [{"name": "shapes", "options": {"k": "v\x00"}}]},
        {"seed": 2**31},
    ],
)
def test_strings_and_seeds_that_reach_the_database_or_the_disk_are_bounded(fields):
    with pytest.raises(ValidationError):
        TrainConfig(**fields)


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("steps.a.b", "steps is int"),
        ("model.a.b", "model is str"),
        ("lora_alpha.a.b", "lora_alpha is NoneType"),
        ("rewards.3.weight", "list of 1"),
        ("rewards.x", "list of 1"),
    ],
)
def test_dotted_overrides_through_a_non_object_name_the_override(key, where):
    with pytest.raises(OverrideError, match=where) as err:
        TrainConfig().with_overrides({key: 1})
    assert err.value.key == key


def test_nested_overrides_still_work():
    config = TrainConfig().with_overrides({"sde_window.1": 0.4, "rewards.-1.weight": 0.7})
    assert config.sde_window == (0.0, 0.4) and config.rewards[0].weight == 0.7


def test_resolution_and_rollout_size_follow_the_family_table():
    assert FAMILIES["builtin"].resolutions == (32, 32)
    with pytest.raises(ValidationError, match="resolution=2048: model='builtin' generates 32 pixels"):
        TrainConfig(resolution=2048)
    with pytest.raises(ValidationError, match="holds at most 4096 samples"):
        TrainConfig(prompts_per_step=4096, group_size=512)
    TrainConfig(prompts_per_step=512, group_size=8)  # 4096: the builtin's largest rollout
    sd3 = {"model": "sd3", "model_path": "/models/sd3"}
    TrainConfig(**sd3, resolution=1024, prompts_per_step=64, group_size=16)
    with pytest.raises(ValidationError, match="holds at most 1024 samples"):
        TrainConfig(**sd3, resolution=512, prompts_per_step=128, group_size=16)


def test_check_finite_names_the_step_and_the_metric():
    check_finite(3, {"loss/total": 0.1, "grad_norm": 2.0, "ratio/max": math.inf})  # only the two that matter
    with pytest.raises(FloatingPointError, match=r"step 7: loss/total=nan"):
        check_finite(7, {"loss/total": math.nan, "grad_norm": 1.0})
    with pytest.raises(FloatingPointError, match=r"step 2: grad_norm=inf"):
        check_finite(2, {"loss/total": 0.0, "grad_norm": math.inf})


def test_a_run_whose_loss_turns_nan_fails_with_a_clear_error(tmp_path):
    from trainer.callbacks import NullCallback
    from trainer.train import train

    config = TrainConfig(
        steps=3,
        prompts_per_step=2,
        group_size=2,
        num_minibatches=1,
        num_steps=4,
        sde_steps=1,
        eval_every=0,
        sample_every=0,
        checkpoint_every=0,
    )

    def nan_reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.full((len(prompts),), math.nan)

    with pytest.raises(FloatingPointError, match="step 1: loss/total=nan"):
        train(config, NullCallback(), out_dir=tmp_path, rewards={"shapes": nan_reward})
    assert not list(tmp_path.glob("checkpoint*"))  # nothing diverged was saved to resume from


# --- remote rewards: the operator's host allowlist ---


def test_host_rules():
    assert host_allowed("http://scorer:8000/x", ["scorer"]) and host_allowed("http://Scorer:8000/", ["scorer:8000"])
    assert not host_allowed("http://scorer:9000/", ["scorer:8000"])
    assert not host_allowed("http://127.0.0.1/", [])
    assert "scheme 'file'" in refused_url("file:///etc/passwd", ["anything"], setting="S")
    assert "no host" in refused_url("http:///path", ["x"], setting="S")
    assert "not in S" in refused_url("http://10.0.0.1:80/", ["scorer"], setting="S")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.server.hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/elsewhere")
            self.end_headers()
            return
        body = b"SECRET internal page: db password hunter2" if self.path == "/secret" else b"not json SECRET"
        self.send_response(403 if self.path == "/secret" else 200, "SECRET reason")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def _images(n: int = 2) -> tuple[torch.Tensor, list[str]]:
    return torch.rand(n, 3, 8, 8), ["a"] * n


def test_a_host_outside_the_allowlist_is_never_contacted(server, monkeypatch):
    monkeypatch.delenv(HOSTS_ENV, raising=False)
    with reward_hosts(["scorer.internal"]):
        with pytest.raises(ValueError, match="not in REMOTE_REWARD_HOSTS"):
            RemoteReward(url=f"{server.url}/score", retries=0)
        with reward_hosts([]):
            with pytest.raises(ValueError, match="not in REMOTE_REWARD_HOSTS"):
                RemoteReward(url=f"{server.url}/score", retries=0)
    reward = RemoteReward(url=f"{server.url}/score", retries=0)  # no allowlist in this process: the CLI
    with reward_hosts(["scorer.internal"]), pytest.raises(RemoteRewardError, match="not in REMOTE_REWARD_HOSTS"):
        reward(*_images())  # checked again before each request
    assert server.hits == 0
    assert HOSTS_ENV not in os.environ  # the block restored the environment


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/secret", "HTTP 403 Forbidden"),
        ("/notjson", "not JSON"),
        ("/redirect", "HTTP 302 Found (redirects are not followed)"),
    ],
)
def test_errors_give_the_status_never_the_body(server, path, expected):
    with reward_hosts(["127.0.0.1"]):
        reward = RemoteReward(url=f"{server.url}{path}", retries=0)
        with pytest.raises(RemoteRewardError) as err:
            reward(*_images())
    assert expected in str(err.value)
    assert "SECRET" not in str(err.value) and "hunter2" not in str(err.value)
    assert server.hits == 1  # the redirect was not followed
