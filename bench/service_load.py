"""Service load benchmark (prints a table, not a test): the distributed stack (PostgreSQL + Redis) on this machine.

    .venv/bin/python bench/service_load.py [--runs 5] [--clients 50] [--requests 20] [--workers 2]

1. submit -> running: POST /runs until a real Celery worker (Redis broker) has claimed the run.
2. metric ingest: points/s through store.metrics.append_metrics (the worker's per-step calls, and batched).
3. the comparison query: api.services.comparisons.aligned for 4 runs x 6 metrics x 10k steps.
4. GET /runs at N concurrent clients against `flowdppo api --workers W` (uvicorn) on 127.0.0.1 (p50/p99).
Env: BENCH_DATABASE_URL (default DATABASE_TEST_URL or postgresql+psycopg://postgres@127.0.0.1:5432/test; a fresh
schema is created and dropped), BENCH_REDIS_URL (default redis://127.0.0.1:6379, a free database number is used).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.schemas import ComparisonCreate  # noqa: E402
from api.services import Services  # noqa: E402
from api.services import comparisons as comparison_service  # noqa: E402
from api.settings import Settings  # noqa: E402
from store import metrics, runs, teams  # noqa: E402
from store.enums import ACTIVE_STATUSES, RunStatus  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402

PG_URL = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
    "DATABASE_TEST_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
LOCK = "flowdppo:bench:lock"
KEYS = ["reward/total/mean", "kl_old/mean", "kl_ref/mean", "mask/fraction", "loss/policy", "grad_norm"]
TINY = {
    "steps": 1,
    "prompts_per_step": 2,
    "group_size": 2,
    "num_steps": 4,
    "sde_steps": 1,
    "num_minibatches": 1,
    "eval_every": 0,
    "sample_every": 0,
    "checkpoint_every": 0,
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_redis_db() -> tuple[str, object]:
    import redis

    for db in range(12, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        if client.set(LOCK, "1", nx=True, ex=1800) and client.dbsize() == 1:
            return f"{REDIS_BASE}/{db}", client
    raise SystemExit("no free Redis database number")


def bench_submit_to_running(
    services: Services, team_id: int, base_path: str | None, n: int, tmp: Path
) -> tuple[list[float], list[float]]:
    """n sequential submissions to an idle worker: service call (validate, commit, enqueue) -> the worker's claim.

    Returns (submit -> running latencies, API-side latencies of the create call alone)."""
    from api.schemas import RunCreate
    from api.services import runs as run_service
    from worker.launch import start_worker_process
    from worker.settings import WorkerSettings

    s = services.settings
    worker = start_worker_process(
        WorkerSettings(**s.platform_values()),
        reaper=False,
        log_file=tmp / "worker.log",
    )
    latencies, api_side = [], []
    try:
        for i in range(n + 1):  # the first one warms the worker up (connection, imports): not counted
            body = RunCreate(preset="shapes-dppo", overrides={**TINY, "model_path": base_path})
            t0 = time.perf_counter()
            with services.session() as session:
                run = run_service.create_run(session, queue=services.queue, input_roots=(), team_id=team_id, body=body)
            t_api = time.perf_counter() - t0
            while True:
                with services.session() as session:
                    status = runs.get_run(session, run_id=run.id).status
                if status != RunStatus.QUEUED:
                    break
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"run {run.id} never started; see {tmp / 'worker.log'}")
                time.sleep(0.005)
            if i:
                latencies.append(time.perf_counter() - t0)
                api_side.append(t_api)
            while status in ACTIVE_STATUSES:  # let it finish, so the next one finds the worker idle
                time.sleep(0.05)
                with services.session() as session:
                    status = runs.get_run(session, run_id=run.id).status
            time.sleep(2.0)  # the worker acks and replaces its child (max-tasks-per-child 1): measure it idle
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    return latencies, api_side


def bench_ingest(services: Services, team_id: int) -> tuple[float, float]:
    """points/s: 2000 per-step calls of 30 keys (the worker's pattern), then 20k steps x 30 keys in 1000-step calls."""
    keys = [f"k/{i}" for i in range(30)]
    with services.session() as session:
        run_id = runs.create_run(session, team_id=team_id, config={"steps": 1}).id
        t0 = time.perf_counter()
        for step in range(2000):
            metrics.append_metrics(session, run_id=run_id, step=step, values={k: step * 0.1 for k in keys})
        per_step = 2000 * 30 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(2000, 22000, 1000):
            rows = [(s, k, s * 0.1) for s in range(start, start + 1000) for k in keys]
            metrics.append_metrics(session, run_id=run_id, rows=rows)
        batched = 20000 * 30 / (time.perf_counter() - t0)
    return per_step, batched


def bench_comparison(services: Services, team_id: int, repeats: int = 10) -> list[float]:
    body = ComparisonCreate(name="bench", preset="shapes-dppo", variants={f"v{i}": {"seed": i} for i in range(4)})
    with services.session() as session:

        class NoQueue:  # the rows are what we time; no worker should run these
            def enqueue_run(self, **job: object) -> None:
                pass

        comparison = comparison_service.create_comparison(  # type: ignore[arg-type]
            session, queue=NoQueue(), input_roots=(), team_id=team_id, body=body
        )
        for run in comparison.runs:
            rows = [(s, k, (s % 97) * 0.01) for s in range(1, 10_001) for k in KEYS]  # steps as the trainer counts
            metrics.append_metrics(session, run_id=run.id, rows=rows)
    times = []
    for _ in range(repeats):
        with services.session() as session:
            t0 = time.perf_counter()
            aligned = comparison_service.aligned(session, team_id=team_id, comparison_id=comparison.id, keys=KEYS)
            times.append(time.perf_counter() - t0)
    assert len(aligned.series) == 6 and all(len(v) == 500 for s in aligned.series for v in s.values.values())
    return times


def bench_list_runs(
    settings: Settings, token: str, clients: int, requests: int, workers: int
) -> tuple[list[float], dict[str, float]]:
    """GET /runs from `clients` concurrent keep-alive connections, each sending `requests` requests back to back.

    The server is `flowdppo api --workers N` in its own processes; the client is one asyncio loop in this process
    (a pool of one connection per client, HTTP/1.1 written and read by hand: ~0.1 ms of CPU per request, so the
    client steals little of the cores it shares with the server).

    Returns (latencies, {"server" / "client": CPU seconds per request, "rate": requests per second}).
    """
    import asyncio
    import json

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL,
        "BROKER_URL": settings.BROKER_URL,
        "DATA_DIR": str(settings.DATA_DIR),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, flowdppo; sys.exit(flowdppo.main(sys.argv[1:]))",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    path = "/api/v1/runs"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(300):
            try:
                first = httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers)
                first.raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        page = first.json()
        assert page["count"] == 50 and all("config" not in r for r in page["data"]), "unexpected page"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()

        async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:-2])
            body = await reader.readexactly(int(fields[b"content-length"]))
            if head[9:12] != b"200":
                raise RuntimeError(f"GET {path}: {head[:12]!r} {body[:200]!r}")
            return body

        async def load() -> tuple[list[float], float]:
            pool = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
            for reader, writer in pool:  # connect and warm up first
                json.loads(await get(reader, writer))
            latencies: list[float] = []

            async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                for _ in range(requests):
                    t0 = time.perf_counter()
                    await get(reader, writer)
                    latencies.append(time.perf_counter() - t0)

            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client(r, w) for r, w in pool))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            for _, writer in pool:
                writer.close()
            return latencies, cpu, wall

        server_cpu0 = _tree_cpu(server.pid)
        latencies, client_cpu, wall = asyncio.run(load())
        n = len(latencies)
        server_cpu = (_tree_cpu(server.pid) - server_cpu0) / n
        return latencies, {"server": server_cpu, "client": client_cpu / n, "rate": n / wall}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="submissions for the submit->running latency")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="GET /runs per client")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="API server processes (GET /runs)")
    args = parser.parse_args()

    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    redis_url, redis_client = free_redis_db()
    tmp = Path(tempfile.mkdtemp(prefix="service-load-"))
    try:
        db_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
        upgrade(db_url)
        settings = Settings(DATA_DIR=tmp / "data", DATABASE_URL=db_url, BROKER_URL=redis_url)
        services = Services.from_settings(settings)
        with services.session() as session:
            team = teams.create_team(session, name="bench")
            _, token = teams.create_token(session, team_id=team.id)
            team_id = team.id
        base_path = _base_model(tmp)
        submit, api_side = bench_submit_to_running(services, team_id, base_path, args.runs, tmp)
        per_step, batched = bench_ingest(services, team_id)
        comparison = bench_comparison(services, team_id)
        with services.session() as session:  # a realistic page: 50 runs with full configs
            for _ in range(60):
                runs.create_run(session, team_id=team_id, config=TrainConfig().model_dump(mode="json"))
        listing, cpu = bench_list_runs(settings, token, args.clients, args.requests, args.workers)
        services.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
        redis_client.flushdb()  # type: ignore[attr-defined]

    sub = statistics.median(submit)
    p99 = pct(listing, 99)
    rows = [
        ("submit -> running (Redis, median)", f"{sub:.3f} s", "<= 1 s", sub <= 1),
        ("  of which API create+commit+enqueue", f"{statistics.median(api_side) * 1000:.1f} ms", "", True),
        ("metric ingest, per-step calls", f"{per_step:,.0f} points/s", ">= 20k points/s", per_step >= 20_000),
        ("metric ingest, batched calls", f"{batched:,.0f} points/s", ">= 20k points/s", batched >= 20_000),
        (
            "comparison 4 runs x 6 keys x 10k (median)",
            f"{statistics.median(comparison) * 1000:.0f} ms",
            "<= 150 ms",
            statistics.median(comparison) <= 0.150,
        ),
        (f"GET /runs p50 ({args.clients} clients)", f"{pct(listing, 50) * 1000:.1f} ms", "", True),
        (f"GET /runs p99 ({args.clients} clients)", f"{p99 * 1000:.1f} ms", "p99 <= 50 ms", p99 <= 0.050),
        ("  throughput", f"{cpu['rate']:,.0f} req/s", "", True),
        (
            "  CPU per request: server / client",
            f"{cpu['server'] * 1000:.2f} / {cpu['client'] * 1000:.2f} ms",
            "",
            True,
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>18}  {'target':>16}  ok")
    for name, measured, target, ok in rows:
        print(f"{name:<{width}}  {measured:>18}  {target:>16}  {'yes' if ok else 'NO'}")
    print(
        f"(PostgreSQL {PG_URL.rsplit('@', 1)[-1]}, Redis {redis_url}, {os.cpu_count()} CPUs shared by server, "
        f"client and database; GET /runs: `flowdppo api --workers {args.workers}`, {args.clients} keep-alive "
        f"connections from one asyncio client process, {len(listing)} requests, 50 runs per page)"
    )


def _base_model(tmp: Path) -> str | None:
    from importlib import resources

    from trainer.models.builtin import SHIPPED_BASE

    if Path(str(resources.files("trainer") / "assets" / SHIPPED_BASE)).is_file():
        return None
    from trainer.pretrain import pretrain_base

    path = tmp / "base.safetensors"
    pretrain_base(path, steps=1, batch_size=4, eval_samples=4)
    return str(path)


if __name__ == "__main__":
    main()
