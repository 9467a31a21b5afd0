"""Dashboard page load (prints a table, not a test): Compare + Samples + Runs of 6 runs x 10k steps, target < 1 s.

    .venv/bin/python bench/page_load.py [--runs 6] [--steps 10000] [--repeats 5]

The runs are the dashboard tests' synthetic runs (worker/seed.py), seeded into a fresh SQLite file; every function the
pages call on opening is timed together, wall clock and this process's CPU (SQLite runs in-process, so the CPU time
is the page's own cost even when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.services import Services  # noqa: E402
from api.services import teams as team_service  # noqa: E402
from api.settings import Settings  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from ui import compare, runs, samples  # noqa: E402
from worker.seed import seed_comparison  # noqa: E402

TARGET_S = 1.0
VARIANTS = ("clip", "dppo", "cps-clip", "cps-dppo", "b-clip", "b-dppo", "c-clip", "c-dppo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6, choices=range(1, len(VARIANTS) + 1))
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'flowdppo.db'}"
        upgrade(url)
        services = Services.from_settings(Settings(DATA_DIR=Path(tmp), DATABASE_URL=url, BROKER_URL="filesystem://"))
        with services.session() as session:
            team = team_service.create_token(session, team_name="bench")
            _, run_ids = seed_comparison(
                session,
                team_id=team.team.id,
                data_dir=Path(tmp),
                steps=args.steps,
                variants=VARIANTS[: args.runs],
                sample_every=max(1, args.steps // 4),
            )
        keys = [k for k in compare.DEFAULT_KEYS if k != "approx_kl"]
        compare.compare_view(services, team.token, run_ids, keys)  # warm caches (imports, statement cache)
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            compare.compare_view(services, team.token, run_ids, keys, 0.6, "step")
            samples.grid_html(*samples.sample_grid(services, team.token, run_ids, None))
            runs.runs_table(services, team.token)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        services.close()
    print(f"\nCompare + Samples + Runs, {args.runs} runs x {args.steps} steps, best and median of {args.repeats}")
    print(f"{'measure':10s} {'best s':>8s} {'median s':>9s} {'target':>8s}  ok")
    for name, values in (("wall", walls), ("CPU", cpus)):
        ordered = sorted(values)
        ok = "yes" if ordered[0] < TARGET_S else "NO"
        print(f"{name:10s} {ordered[0]:8.3f} {ordered[len(ordered) // 2]:9.3f} {'< 1 s':>8s}  {ok}")


if __name__ == "__main__":
    main()
