"""`python -m worker [--gpu N] [--queues ...]`: the worker command without the umbrella CLI."""

from __future__ import annotations

import argparse
import sys

from worker.cli import add_worker_arguments, run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m worker")
    add_worker_arguments(parser)
    sys.exit(run_worker(parser.parse_args()))
