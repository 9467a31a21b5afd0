"""Demo timing benchmark (prints a table, not a test): `flowdppo up --demo` as a new user starts it.

    .venv/bin/python bench/demo_timing.py [--timeout 1800] [--keep]

Starts `flowdppo up --demo` on a temporary DATA_DIR and a free port, waits for the banner (the URL printed), then
polls the REST API with the local token and prints, from the banner: the time to each demo run's first metric point
(its curve on the Compare page), to both curves, to each run finished and to both finished, with each run's steps
and its mean seconds per step. The machine's load average is printed before and after (a shared machine skews it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FINISHED = {"succeeded", "failed", "cancelled"}
KEY = "reward/total/mean"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], threading.Event, list[str]]:
    """`flowdppo up --demo` in its own process group; the event is set once the banner's URL line is printed."""
    # PYTHONPATH: the checkout's modules, whatever the installed package holds; cwd: no .env of the checkout is read.
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdppo", "up", "--demo", "--host", "127.0.0.1", "--port", str(port)],
        cwd=data_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed, lines = threading.Event(), []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "dashboard" in line and "http://" in line:
                printed.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, printed, lines


def poll(client: httpx.Client, run_ids: list[int], t0: float, timeout: float) -> dict[int, dict]:
    """Per run: seconds (from t0) to its first metric point and to finished, its status and steps."""
    seen: dict[int, dict] = {rid: {} for rid in run_ids}
    deadline = t0 + timeout
    while time.monotonic() < deadline and not all("finished" in s for s in seen.values()):
        for rid, state in seen.items():
            if "finished" in state:
                continue
            run = client.get(f"/api/v1/runs/{rid}").json()
            if "first_point" not in state:
                points = client.get(f"/api/v1/runs/{rid}/metrics", params={"key": KEY, "max_points": 10}).json()
                if any(series["steps"] for series in points.get("data", [])):
                    state["first_point"] = time.monotonic() - t0
                    state["first_step_at"] = time.monotonic()
            if run["status"] in FINISHED:
                state.update(finished=time.monotonic() - t0, status=run["status"], steps=run["step"])
                state["name"] = run.get("name", "")
            state.setdefault("name", run.get("name", ""))
        time.sleep(1.0)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for both runs to finish")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DATA_DIR (logs, database)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="flowdppo-demo-"))
    port = free_port()
    print(f"load average before: {load()} on {os.cpu_count()} cores; DATA_DIR {data_dir}; port {port}")
    started = time.monotonic()
    proc, printed, lines = start(data_dir, port)
    try:
        if not printed.wait(timeout=300):
            print("\n".join(lines[-40:]))
            raise SystemExit("no banner within 300 s")
        t0 = time.monotonic()
        token = (data_dir / "local_token").read_text().strip()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        for _ in range(120):  # the banner is printed just before uvicorn listens
            try:
                runs = client.get("/api/v1/runs").json()["data"]
                break
            except httpx.TransportError:
                time.sleep(0.5)
        run_ids = sorted(r["id"] for r in runs)
        seen = poll(client, run_ids, t0, args.timeout)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"banner (URL printed) after {t0 - started:.1f} s of `flowdppo up --demo`")
    header = f"{'run':>4}  {'name':<28} {'first point s':>13} {'finished s':>10} {'status':<10} {'steps':>5}"
    print(f"{header} {'s/step':>6}")
    for rid in run_ids:
        s = seen[rid]
        first, done = s.get("first_point"), s.get("finished")
        per_step = (done - first) / max(1, s.get("steps", 1) - 1) if first is not None and done is not None else None
        print(
            f"{rid:>4}  {s.get('name', '')[:28]:<28} {_fmt(first):>13} {_fmt(done):>10} {s.get('status', '?'):<10} "
            f"{s.get('steps', '?'):>5} {_fmt(per_step):>6}"
        )
    firsts = [seen[r].get("first_point") for r in run_ids]
    dones = [seen[r].get("finished") for r in run_ids]
    print(f"both curves after {_fmt(max(firsts) if None not in firsts else None)} s (target <= 120)")
    print(f"both finished after {_fmt(max(dones) if None not in dones else None)} s (target about 600)")
    print(f"load average after: {load()}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
