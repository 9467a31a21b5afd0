"""Helpers of the API tests: the URL prefix, a tiny run config, and the jobs waiting in the filesystem broker.

The factories (teams, runs, points, samples, checkpoints) are tests/factories.py's."""

from __future__ import annotations

import base64
import json
from typing import Any

from api.services import Services

API = "/api/v1"
TINY = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "num_minibatches": 1, "eval_every": 0}


def broker_messages(services: Services) -> list[dict[str, Any]]:
    """The jobs waiting in the filesystem broker: [{"task": name, "args": [...], "queue": name}]."""
    out = []
    for path in sorted((services.settings.broker_folder / "out").glob("*.msg")):
        message = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": args, "queue": path.name.split(".")[-2]})
    return out


def jobs_for(services: Services, run_id: int) -> list[dict[str, Any]]:
    return [m for m in broker_messages(services) if m["args"] == [run_id]]
