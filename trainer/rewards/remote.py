"""A reward computed by the user's HTTP service: POST images and prompts as JSON, read back one score per image.

Request (POST `url`, Content-Type: application/json, plus the `headers` option)::

    {"images": ["<base64 PNG or JPEG>", ...],   # B images, RGB, 8 bit, the order of the prompts
     "prompts": ["a red circle", ...],          # B strings
     "format": "png"}                           # or "jpeg"

Response (HTTP 200)::

    {"scores": [0.73, 0.12, ...]}               # B finite numbers; the key is the `score_key` option

Where it may connect: when the environment variable FLOWDPPO_REMOTE_REWARD_HOSTS is set (the platform's workers set
it from the operator's REMOTE_REWARD_HOSTS, docs/limits.md), only to those hosts: the URL's host is checked before
every request and redirects are never followed. Unset (the `flowdppo train` CLI on one's own machine): anywhere.
An error names the URL, the status code and its reason, never the response body (a worker must not read an internal
service back to the team).

Timeouts, connection errors, HTTP 429 and 5xx are retried `retries` times with exponential backoff (`backoff`,
2·backoff, 4·backoff ... seconds). Everything else fails the step with `RemoteRewardError`: other HTTP errors, a body
that is not JSON, a missing key, a wrong number of scores, non-numeric or non-finite scores. A training step never
proceeds on missing rewards.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import torch

from trainer.hosts import refused_url, url_host
from trainer.images import to_uint8_hwc
from trainer.rewards.registry import RewardFn, register_reward

logger = logging.getLogger(__name__)

FORMATS = ("png", "jpeg")
_OPTIONS = {"url", "format", "timeout", "retries", "backoff", "headers", "score_key", "jpeg_quality", "batch_size"}
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
HOSTS_ENV = "FLOWDPPO_REMOTE_REWARD_HOSTS"  # a JSON list of allowed hosts; unset = no allowlist


class RemoteRewardError(RuntimeError):
    """The remote reward could not produce one finite score per image; the training step must fail."""


def allowed_hosts() -> list[str] | None:
    """The hosts remote rewards may reach in this process (FLOWDPPO_REMOTE_REWARD_HOSTS); None = any host."""
    raw = os.environ.get(HOSTS_ENV)
    if raw is None:
        return None
    hosts = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
    return [str(h).strip() for h in hosts if str(h).strip()]


@contextmanager
def reward_hosts(hosts: Sequence[str]) -> Iterator[None]:
    """Allow remote rewards only `hosts` while the block runs (in this process and the ones it starts)."""
    previous = os.environ.get(HOSTS_ENV)
    os.environ[HOSTS_ENV] = json.dumps(list(hosts))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HOSTS_ENV, None)
        else:
            os.environ[HOSTS_ENV] = previous


def encode_images(images: torch.Tensor, fmt: str = "png", jpeg_quality: int = 95) -> list[str]:
    """(B, 3, H, W) float in [0, 1] -> B base64 strings of 8-bit PNG/JPEG files."""
    from PIL import Image

    out = []
    for array in to_uint8_hwc(images):  # (H, W, 3)
        buffer = io.BytesIO()
        if fmt == "png":
            Image.fromarray(array).save(buffer, format="PNG")
        else:
            Image.fromarray(array).save(buffer, format="JPEG", quality=jpeg_quality)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


class RemoteReward:
    """The callable behind the "remote" reward; see the module docstring for the JSON schema.

    Args:
        url: the endpoint that scores a batch.
        format: "png" (lossless, default) or "jpeg".
        timeout: seconds per request (connect and read).
        retries: extra attempts after a timeout, connection error, 429 or 5xx.
        backoff: seconds before the first retry; doubles each time.
        headers: extra HTTP headers, e.g. {"Authorization": "Bearer ..."}.
        score_key: key of the score list in the response.
        jpeg_quality: JPEG quality 1-100.
        batch_size: images per request (None = the whole batch in one request).
    """

    def __init__(
        self,
        url: str,
        format: str = "png",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        headers: dict[str, str] | None = None,
        score_key: str = "scores",
        jpeg_quality: int = 95,
        batch_size: int | None = None,
    ):
        hosts = allowed_hosts()  # None (no allowlist in this process): any host, but still http(s) with a host
        problem = refused_url(url, hosts if hosts is not None else [url_host(url)], setting="REMOTE_REWARD_HOSTS")
        if problem is not None:
            raise ValueError(f"remote reward {url!r}: {problem}")
        if format not in FORMATS:
            raise ValueError(f"remote reward: format must be one of {FORMATS}, got {format!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(
                f"remote reward: need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"remote reward: batch_size must be >= 1 or None, got {batch_size}")
        self.url, self.format, self.score_key = url, format, score_key
        self.retries, self.backoff, self.jpeg_quality, self.batch_size = retries, backoff, jpeg_quality, batch_size
        self.client = httpx.Client(timeout=timeout, headers=headers or {}, follow_redirects=False)
        self.attempts = 0  # requests sent, retries included (tests and logs read it)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"remote reward: got {images.shape[0]} images for {len(prompts)} prompts")
        size = self.batch_size or len(prompts)
        scores = [self._score(images[i : i + size], prompts[i : i + size]) for i in range(0, len(prompts), size)]
        return torch.cat(scores)  # (B,) float32 on the CPU

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        payload = {
            "images": encode_images(images, self.format, self.jpeg_quality),
            "prompts": prompts,
            "format": self.format,
        }
        response = self._post(payload)
        try:
            body = response.json()
        except ValueError as err:
            raise RemoteRewardError(f"remote reward {self.url}: the response is not JSON") from err
        if not isinstance(body, dict) or self.score_key not in body:
            raise RemoteRewardError(f"remote reward {self.url}: the response has no {self.score_key!r} key")
        return _parse_scores(body[self.score_key], len(prompts), self.url)

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        """POST with retries on transient failures; raises RemoteRewardError once they are used up."""
        for attempt in range(self.retries + 1):
            hosts = allowed_hosts()  # before every request: the URL must still be allowed in this process
            problem = None if hosts is None else refused_url(self.url, hosts, setting="REMOTE_REWARD_HOSTS")
            if problem is not None:
                raise RemoteRewardError(f"remote reward {self.url}: {problem}")
            self.attempts += 1
            try:
                response = self.client.post(self.url, json=payload)
            except httpx.TransportError as err:  # timeouts, refused connections, resets
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return response
                if response.status_code not in _RETRY_STATUS:
                    raise RemoteRewardError(f"remote reward {self.url}: {_status(response)}")
                problem = _status(response)
            if attempt < self.retries:
                delay = self.backoff * 2**attempt
                logger.warning(
                    "remote reward %s: %s; retry %d/%d in %.1fs", self.url, problem, attempt + 1, self.retries, delay
                )
                time.sleep(delay)
        raise RemoteRewardError(f"remote reward {self.url}: failed {self.retries + 1} attempts, last: {problem}")

    def close(self) -> None:
        self.client.close()


def _status(response: httpx.Response) -> str:
    """'HTTP 404 Not Found': the status and its standard reason, never the body or the server's own reason text."""
    note = " (redirects are not followed)" if response.is_redirect else ""
    return f"HTTP {response.status_code} {httpx.codes.get_reason_phrase(response.status_code)}{note}".strip()


def _parse_scores(scores: Any, expected: int, url: str) -> torch.Tensor:
    """A list of `expected` finite numbers -> (expected,) float32; anything else raises RemoteRewardError."""
    if not isinstance(scores, list) or len(scores) != expected:
        got = f"{len(scores)} scores" if isinstance(scores, list) else type(scores).__name__
        raise RemoteRewardError(f"remote reward {url}: expected a list of {expected} scores, got {got}")
    bad = [s for s in scores if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)]
    if bad:
        kinds = sorted({type(s).__name__ if not isinstance(s, float) else "non-finite" for s in bad})
        raise RemoteRewardError(f"remote reward {url}: scores must be finite numbers, got {len(bad)} of {kinds}")
    return torch.tensor(scores, dtype=torch.float32)


@register_reward("remote", options=_OPTIONS, required=["url"])
def remote(device: torch.device, **options: Any) -> RewardFn:
    """The "remote" reward: options url (required), format, timeout, retries, backoff, headers, score_key,
    jpeg_quality, batch_size (see RemoteReward). `device` is unused: images are encoded on the CPU."""
    return RemoteReward(**options)
