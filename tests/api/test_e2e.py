"""End to end through REST: a tiny run submitted to the API is executed by a real Celery worker process; its
metrics stream live, its samples and checkpoints can be downloaded, it succeeds. Embedded (SQLite + filesystem
broker), distributed (PostgreSQL + Redis), and `flowdppo up` itself as a subprocess on a real port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from factories import free_port, make_team_token
from fastapi.testclient import TestClient

from api.client import Client
from api.main import create_app
from api.services import Services
from api.settings import Settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# A few 0.1-second steps on CPU (as in tests/worker): samples at steps 2 and 3, a checkpoint at step 2.
E2E = {
    "steps": 3,
    "prompts_per_step": 4,
    "group_size": 4,
    "num_steps": 4,
    "sde_steps": 1,
    "eval_every": 0,
    "sample_every": 2,
    "num_logged_samples": 2,
    "checkpoint_every": 2,
}
WAIT_S = 240


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """None (the shipped base) when trainer/assets has it, else a 1-step pretrained tiny base, in an INPUT_ROOTS
    folder (the API refuses a model_path outside them)."""
    from trainer.models.builtin import SHIPPED_BASE

    if Path(str(resources.files("trainer") / "assets" / SHIPPED_BASE)).is_file():
        yield None
        return
    from trainer.pretrain import pretrain_base

    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    pretrain_base(path, steps=1, batch_size=4, eval_samples=4)
    with pytest.MonkeyPatch.context() as env:  # read by the API in this process and by `flowdppo up`
        env.setenv("INPUT_ROOTS", json.dumps([str(path.parent)]))
        yield str(path)


def _check_finished_run(client: Client, run_id: int) -> None:
    """Wait for the worker to start the run, follow it live to the end, then read everything it produced."""
    deadline = time.monotonic() + WAIT_S
    while client.get_run(run_id).status == "queued":
        assert time.monotonic() < deadline, f"run {run_id} was never picked up by a worker"
        time.sleep(0.5)
    events = list(client.stream(run_id))
    streamed = sorted({e.data["step"] for e in events if e.event == "metrics"})
    assert events[-1].event == "end", events[-3:]
    run = client.get_run(run_id)
    assert events[-1].data["status"] == "succeeded", (run.error, client.events(run_id))
    assert run.status == "succeeded" and run.progress == 1.0 and run.worker
    assert len(streamed) == 3 and "reward/total/mean" in client.metric_keys(run_id)
    (series,) = client.metrics(run_id, keys=["reward/total/mean"]).data
    assert series.steps == streamed and all(v is not None for v in series.last)
    samples = client.samples(run_id)
    assert samples and {s.index for s in samples} == {0, 1}
    assert client.sample_image(run_id, samples[0].id)[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.checkpoints(run_id), "a checkpoint was recorded"


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"process {proc.args} did not stop within {timeout} s after signal {sig}")
    return proc.returncode


@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_rest_run_through_a_real_worker(mode, request, tmp_path, base_model_path):
    from worker.launch import start_worker_process
    from worker.settings import WorkerSettings

    data_dir = tmp_path / "data"
    if mode == "embedded":
        urls = {"DATABASE_URL": f"sqlite:///{data_dir}/flowdppo.db", "BROKER_URL": "filesystem://"}
    else:
        urls = {
            "DATABASE_URL": request.getfixturevalue("make_pg_schema")(),
            "BROKER_URL": request.getfixturevalue("redis_url"),
        }
    settings = Settings(DATA_DIR=data_dir, **urls)
    if mode == "embedded":
        from store.migrate import upgrade

        upgrade(settings.DATABASE_URL)
    services = Services.from_settings(settings)
    worker = start_worker_process(
        WorkerSettings(DATA_DIR=data_dir, WORKER_HEARTBEAT_SECONDS=1, BROKER_POLL_SECONDS=0.2, **urls),
        reaper=False,
        log_file=tmp_path / "worker.log",
    )
    try:
        with services.session() as session:
            team = make_team_token(session)
        with TestClient(create_app(settings, services)) as http:
            client = Client(token=team.token, http=http)
            run = client.create_run(preset="shapes-dppo", overrides={**E2E, "model_path": base_model_path})
            _check_finished_run(client, run.id)
            assert [w.name for w in client.workers() if w.online], "the worker answers a ping"
    finally:
        _stop(worker)
        print((tmp_path / "worker.log").read_text()[-3000:])


def test_flowdppo_up_embedded(tmp_path, base_model_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "DATA_DIR")}
    env.update(DATA_DIR=str(tmp_path / "data"), WORKER_HEARTBEAT_SECONDS="1", BROKER_POLL_SECONDS="0.2")
    up = subprocess.Popen(
        [sys.executable, str(ROOT / "flowdppo.py"), "up", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = []
    try:
        token = None
        for line in up.stdout:
            output.append(line)
            if line.strip().startswith("token"):
                token = line.split()[1]
            if line.startswith("Ctrl-C"):
                break
        assert token and token.startswith("fdp_"), "".join(output)
        client = Client(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert client.health().status == "ok"
                break
            except (OSError, httpx.TransportError):  # not listening yet
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.2)
        assert client.me().name == "local"
        run = client.create_run(preset="shapes-clip", overrides={**E2E, "model_path": base_model_path})
        _check_finished_run(client, run.id)
        client.close()
    finally:
        code = _stop(up, signal.SIGINT)  # Ctrl-C
        output.append(up.stdout.read())
        print("".join(output)[-3000:])
    assert code == 0 and "stopped" in output[-1]
    assert (tmp_path / "data" / "local_token").stat().st_mode & 0o077 == 0, "the saved token is private"
