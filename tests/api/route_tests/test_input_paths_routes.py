"""Files a config names (file: prompt sets, model_path, reward paths) must lie inside INPUT_ROOTS: anything else is
a 422 naming the field, with nothing stored or queued (the worker would read it and show it in run.error)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from api_helpers import API, TINY


@pytest.fixture
def inputs(tmp_path, monkeypatch, services):
    """A configured input root holding a prompt file; a link in it pointing outside."""
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "prompts.txt").write_text("a red circle\n")
    os.symlink("/etc", root / "etc-link")
    monkeypatch.setattr(services.settings, "INPUT_ROOTS", [root.resolve(), Path("/models")])
    return root


def _refused(client, services, team, body, loc, path="runs"):
    before = len(services.queue.sent)
    r = client.post(f"{API}/{path}", json=body, headers=team.headers)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert [tuple(e["loc"]) for e in errors] == [("body", *loc)], errors
    assert "INPUT_ROOTS" in errors[0]["msg"] and errors[0]["type"] == "value_error"
    assert len(services.queue.sent) == before, "nothing may be queued"
    if path == "runs":
        assert client.get(f"{API}/runs", headers=team.headers).json()["count"] == 0, "nothing may be stored"


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"train_prompts": "file:/proc/self/environ"}, ("overrides", "train_prompts")),
        ({"eval_prompts": "file:/models/../proc/self/environ"}, ("overrides", "eval_prompts")),
        ({"eval_prompts": "file:prompts.txt"}, ("overrides", "eval_prompts")),  # relative: read who knows where
        ({"model_path": "/etc"}, ("overrides", "model_path")),
        ({"model": "sd3", "model_path": "../sd3"}, ("overrides", "model_path")),  # not a hub id
        (
            {"rewards": [{"name": "clip_score", "options": {"path": "/srv/other-team/clip"}}]},
            ("overrides", "rewards", 0, "options", "path"),
        ),
    ],
)
def test_paths_outside_the_input_roots_are_refused(client, services, team, inputs, overrides, loc):
    _refused(client, services, team, {"preset": "shapes-dppo", "overrides": {**TINY, **overrides}}, loc)


def test_a_link_out_of_a_root_and_a_full_config_are_refused(client, services, team, inputs):
    body = {"preset": "shapes-dppo", "overrides": {"train_prompts": f"file:{inputs}/etc-link/passwd"}}
    _refused(client, services, team, body, ("overrides", "train_prompts"))
    body = {"config": {"train_prompts": "file:/proc/self/environ"}}
    _refused(client, services, team, body, ("config", "train_prompts"))


def test_paths_inside_a_root_and_hub_ids_are_accepted(client, services, team, inputs):
    overrides = {
        **TINY,
        "train_prompts": f"file:{inputs}/prompts.txt",
        "rewards": [{"name": "clip_score", "options": {"path": "/models/clip-vit-large-patch14"}}],
    }
    r = client.post(f"{API}/runs", json={"preset": "shapes-dppo", "overrides": overrides}, headers=team.headers)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["train_prompts"] == f"file:{inputs}/prompts.txt"
    hub = {**TINY, "model": "sd3", "model_path": "stabilityai/stable-diffusion-3.5-medium"}
    r = client.post(f"{API}/runs", json={"preset": "shapes-dppo", "overrides": hub}, headers=team.headers)
    assert r.status_code == 201, r.text


def test_comparison_variants_and_evaluations_are_checked_too(client, services, team, inputs):
    body = {"preset": "shapes-dppo", "overrides": TINY, "variants": {"a": {}, "b": {"model_path": "/etc"}}}
    _refused(client, services, team, body, ("variants", "b", "model_path"), path="comparisons")
    created = client.post(f"{API}/runs", json={"preset": "shapes-dppo", "overrides": TINY}, headers=team.headers)
    body = {"overrides": {"prompts": "file:/proc/self/environ"}}
    _refused(client, services, team, body, ("overrides", "prompts"), path=f"runs/{created.json()['id']}/evaluate")


def test_a_hub_id_is_never_read_from_the_workers_disk(tmp_path, monkeypatch):
    # The API lets "org/name" through as a hub id; the trainer must then ask the hub, not a folder of that name.
    from trainer.models.loading import pretrained_kwargs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "inputs").mkdir(parents=True)
    kwargs = pretrained_kwargs("data/inputs", "sd3", "stabilityai/stable-diffusion-3.5-medium")
    assert kwargs["pretrained_model_name_or_path"] == "data/inputs"  # a hub id, not str(tmp_path / "data/inputs")
    local = pretrained_kwargs("./data/inputs", "sd3", "stabilityai/stable-diffusion-3.5-medium")
    assert local == {"pretrained_model_name_or_path": "data/inputs", "local_files_only": True}
