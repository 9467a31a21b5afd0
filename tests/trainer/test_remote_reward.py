"""The remote reward against a real HTTP server on 127.0.0.1: success, retries with backoff, payload checks."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.rewards import build_reward
from trainer.rewards.remote import RemoteRewardError


class ScoringServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests = {}  # path -> count
        self.bodies = []
        self.headers_seen = []
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):  # the client gave up on /slow: expected, keep output clean
        pass

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            count = server.requests[self.path] = server.requests.get(self.path, 0) + 1
            server.bodies.append(body)
            server.headers_seen.append(dict(self.headers))
        brightness = [
            float(np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))).mean() / 255) for b in body["images"]
        ]
        route = self.path
        if route == "/slow":
            time.sleep(1.0)
        if route == "/flaky" and count <= 2:
            return self._send(503, {"error": "warming up"})
        if route == "/forbidden":
            return self._send(403, {"error": "no"})
        payloads = {
            "/short": {"scores": brightness[:-1]},
            "/nan": {"scores": [float("nan")] + brightness[1:]},
            "/strings": {"scores": ["high"] * len(brightness)},
            "/wrongkey": {"reward": brightness},
            "/custom": {"reward": brightness},
        }
        if route == "/text":
            return self._send(200, "not json at all", raw=True)
        return self._send(200, payloads.get(route, {"scores": brightness}))

    def _send(self, status, payload, raw=False):
        data = (payload if raw else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = ScoringServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def batch(n=3):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=gen), [f"prompt {i}" for i in range(n)]


def test_success_sends_the_documented_schema_and_reads_scores(server):
    images, prompts = batch()
    reward = build_reward("remote", {"url": server.url + "/score", "headers": {"Authorization": "Bearer t0k"}})
    scores = reward(images, prompts)
    # The server scored the decoded PNGs: lossless, in order.
    expected = ((images * 255).round() / 255).mean(dim=(1, 2, 3))
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    body = server.bodies[0]
    assert body["prompts"] == prompts and body["format"] == "png" and len(body["images"]) == 3
    assert server.headers_seen[0]["Authorization"] == "Bearer t0k"


def test_jpeg_batches_and_custom_score_key(server):
    images, prompts = batch(5)
    reward = build_reward(
        "remote", {"url": server.url + "/custom", "format": "jpeg", "score_key": "reward", "batch_size": 2}
    )
    scores = reward(images, prompts)
    assert scores.shape == (5,) and server.requests["/custom"] == 3  # 2 + 2 + 1
    assert all(b["format"] == "jpeg" for b in server.bodies)
    torch.testing.assert_close(scores, images.mean(dim=(1, 2, 3)), atol=0.05, rtol=0)  # lossy, but close


def test_transient_errors_are_retried_with_backoff(server):
    reward = build_reward("remote", {"url": server.url + "/flaky", "retries": 3, "backoff": 0.01})
    images, prompts = batch()
    assert reward(images, prompts).shape == (3,)
    assert server.requests["/flaky"] == 3 and reward.attempts == 3  # two 503s, then success


def test_timeout_retries_then_fails_the_step(server):
    reward = build_reward("remote", {"url": server.url + "/slow", "timeout": 0.2, "retries": 2, "backoff": 0.01})
    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="failed 3 attempts, last: ReadTimeout"):
        reward(*batch())
    assert reward.attempts == 3
    assert time.perf_counter() - start < 3.0


def test_unreachable_server_fails_after_retries():
    reward = build_reward("remote", {"url": "http://127.0.0.1:9/score", "retries": 1, "backoff": 0.0, "timeout": 1})
    with pytest.raises(RemoteRewardError, match="failed 2 attempts, last: ConnectError"):
        reward(*batch())


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/short", "expected a list of 3 scores, got 2 scores"),
        ("/nan", "finite numbers"),
        ("/strings", "finite numbers"),
        ("/wrongkey", "no 'scores' key"),
        ("/text", "not JSON"),
        ("/forbidden", "HTTP 403"),
    ],
)
def test_bad_payloads_fail_without_retrying(server, route, message):
    reward = build_reward("remote", {"url": server.url + route, "retries": 3, "backoff": 0.01})
    with pytest.raises(RemoteRewardError, match=message):
        reward(*batch())
    assert server.requests[route] == 1


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown options \['tiemout'\]"):
        build_reward("remote", {"url": "http://x", "tiemout": 3})
    with pytest.raises(ValueError, match="needs options"):
        build_reward("remote", {})
    with pytest.raises(ValueError, match="format must be one of"):
        build_reward("remote", {"url": "http://x", "format": "webp"})
