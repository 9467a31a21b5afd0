"""`flowdppo worker`: one job per worker (no --concurrency), node names distinct per worker on a host."""

from __future__ import annotations

import argparse
import os
import socket

import pytest

from worker.cli import add_worker_arguments, default_node_name
from worker.launch import worker_command


def test_concurrency_is_not_an_option():
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "2"])
    assert not any(arg.startswith("--concurrency") for arg in worker_command(gpu=0))


def test_node_names():
    host = socket.gethostname()
    # A worker restarted with the same --gpu keeps its name: it may reclaim its own redelivered job.
    assert default_node_name(0) == default_node_name(0) == f"gpu0@{host}" != default_node_name(1)
    # Without --gpu the pid tells two workers of one host apart.
    assert default_node_name(None) == f"worker-{os.getpid()}@{host}"
