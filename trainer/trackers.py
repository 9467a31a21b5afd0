"""Mirrors of a run's metrics and samples to the trackers teams already use: TensorBoard event files and MLflow.

A mirror is a Callback that writes somewhere other than the run's own record. `MirroredCallback` wraps the run's
primary callback (the CLI's files, the worker's database) and fans every report out to the mirrors, each call
guarded: a mirror that fails (tracker down, disk full) logs a rate-limited warning and never fails or slows the run;
should_stop() comes from the primary callback alone. The libraries are optional (`pip install 'flowdppo[trackers]'`)
and imported only when a mirror is built. Where a mirror may write is checked here (`TrackerSpec`); see
docs/trackers.md for the rule.
"""

from __future__ import annotations

import logging
import math
import posixpath
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.callbacks import Callback, NullCallback, Sample
from trainer.hosts import host_allowed, url_host
from trainer.text import Text
from trainer.tracker_backends import EXTRA_HINT, MLflowMirror, TensorBoardMirror, flatten_params

__all__ = ["EXTRA_HINT", "MLflowMirror", "TensorBoardMirror", "flatten_params"]  # the writers, re-exported

log = logging.getLogger(__name__)

WARN_EVERY_S = 300.0  # a failing mirror warns once, then at most once per this many seconds


class TrackerSpec(BaseModel):
    """One tracker a run mirrors to. Where it writes is bounded (docs/trackers.md):

    - tensorboard: `uri` is a folder *relative to the run's output folder* (default "tensorboard").
    - mlflow: `uri` is an http(s) tracking server (the platform also requires its host in the operator's
      TRACKER_HOSTS), or `sqlite:///RELATIVE.db`, a database inside the run's output folder.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tensorboard", "mlflow"] = Field(description="Which tracker: TensorBoard event files or MLflow.")
    uri: Text(2000) = Field(
        "",
        description="tensorboard: folder relative to the run's output (default 'tensorboard'); "
        "mlflow: http(s)://host[:port][/path] or sqlite:///relative.db (inside the run's output).",
    )
    experiment: Text(250, min_length=1) = Field("flowdppo", description="MLflow experiment name.")
    run_name: Text(250) | None = Field(None, description="MLflow run name; None = the run's own name.")

    @model_validator(mode="after")
    def _check_uri(self) -> TrackerSpec:
        if self.kind == "tensorboard":
            self.uri = self.uri or "tensorboard"
            _check_relative(self.uri, "tensorboard folder")
        elif self.uri.startswith("sqlite:///"):
            _check_relative(self.uri.removeprefix("sqlite:///"), "sqlite database")
        else:
            parts = urlsplit(self.uri)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"mlflow uri {self.uri!r} must be http(s)://host[:port][/path] or sqlite:///relative/path.db"
                )
        return self

    def local_path(self, out_dir: Path) -> Path | None:
        """The file or folder this tracker writes under `out_dir`; None for a remote MLflow server."""
        if self.kind == "tensorboard":
            return Path(out_dir) / self.uri
        if self.uri.startswith("sqlite:///"):
            return Path(out_dir) / self.uri.removeprefix("sqlite:///")
        return None


def _check_relative(path: str, what: str) -> None:
    """Refuse absolute paths, `..`, NUL and empty names: a tracker writes only inside the run's output folder."""
    if not path or "\x00" in path or "\\" in path:
        raise ValueError(f"{what} {path!r} must be a non-empty relative path without NUL or backslashes")
    if path.startswith("/") or ".." in posixpath.normpath(path).split("/"):
        raise ValueError(f"{what} {path!r} must be relative to the run's output folder, without '..'")


def refused_hosts(specs: Sequence[TrackerSpec], allowed: Sequence[str]) -> list[str]:
    """`host[:port]` of each remote MLflow server in `specs` not in `allowed` (`host` there allows every port)."""
    remote = [spec.uri for spec in specs if spec.kind == "mlflow" and spec.local_path(Path(".")) is None]
    return [url_host(uri) for uri in remote if not host_allowed(uri, allowed)]  # the rule of trainer/hosts.py


# --- guarding: failures warn, never fail or slow the run ---


class _Warner:
    """One warning for the first failure, then at most one per WARN_EVERY_S with the count left unsaid."""

    def __init__(self, name: str):
        self.name, self.last, self.suppressed = name, -math.inf, 0

    def __call__(self, what: str, err: BaseException | str) -> None:
        now = time.monotonic()
        if now - self.last < WARN_EVERY_S:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more failures since the last warning)" if self.suppressed else ""
        log.warning("%s mirror: %s failed: %s; the run goes on without it%s", self.name, what, err, more)
        self.last, self.suppressed = now, 0


class BackgroundMirror(NullCallback):
    """Runs a mirror's calls on its own thread, so that a slow or unreachable tracker never holds up a step.

    At most `max_pending` reports wait; past that new ones are dropped (and warned about). close() waits up to
    `close_timeout` seconds for the pending ones, then leaves the thread to end after its current call.
    """

    def __init__(self, mirror: Any, *, max_pending: int = 1000, close_timeout: float = 30.0):
        self.mirror, self.name, self.close_timeout = mirror, mirror.name, close_timeout
        self.warn = _Warner(mirror.name)
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue(maxsize=max_pending)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-mirror", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            method, args = item
            try:
                getattr(self.mirror, method)(*args)
            except Exception as err:  # any tracker failure is a warning, never the run's failure
                self.warn(method, err)

    def _put(self, method: str, *args: Any) -> None:
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            self.warn(method, f"{self._queue.maxsize} reports already waiting (tracker slow or down): dropped")

    def on_metrics(self, step: int, metrics: dict[str, float], wall: float | None = None) -> None:
        self._put("on_metrics", step, dict(metrics), wall if wall is not None else time.time())

    def on_samples(self, step: int, samples: list[Sample], wall: float | None = None) -> None:
        self._put("on_samples", step, list(samples), wall if wall is not None else time.time())

    def close(self, status: str = "FINISHED") -> None:
        deadline = time.monotonic() + self.close_timeout
        self._put("close", status)
        try:
            self._queue.put(None, timeout=self.close_timeout)  # the thread's end, after what is pending
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._stopping.set()  # ends after its current call
            self.warn("close", f"still busy after {self.close_timeout:g} s; {self._queue.qsize()} reports unsent")


class MirroredCallback(NullCallback):
    """The run's primary callback plus mirrors. Only the primary's errors propagate; should_stop is the primary's."""

    def __init__(self, primary: Callback, mirrors: Sequence[Any]):
        self.primary, self.mirrors, self.stopped = primary, list(mirrors), False
        self._warn = {id(m): _Warner(m.name) for m in self.mirrors}

    def __getattr__(self, name: str) -> Any:
        """Anything else is the primary's (e.g. the worker's StoreCallback.owned), so wrapping changes nothing."""
        if name in (
            "primary",
            "mirrors",
            "stopped",
            "_warn",
        ):  # not yet set (copy, unpickling): no recursion into primary
            raise AttributeError(name)
        return getattr(self.primary, name)

    def _each(self, method: str, *args: Any) -> None:
        for mirror in self.mirrors:
            try:
                getattr(mirror, method)(*args)
            except Exception as err:  # a tracker failure never fails the run
                self._warn[id(mirror)](method, err)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.primary.on_metrics(step, metrics)
        self._each("on_metrics", step, metrics)

    def on_samples(self, step: int, samples: list[Sample]) -> None:
        self.primary.on_samples(step, samples)
        self._each("on_samples", step, samples)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.primary.on_checkpoint(step, path)

    def should_stop(self) -> bool:
        self.stopped = self.primary.should_stop()  # the run ends early: its mirrors end KILLED, not FINISHED
        return self.stopped

    def close(self, status: str = "FINISHED") -> None:
        """End every mirror (MLflow: the run's status FINISHED, FAILED or KILLED); the primary is the caller's."""
        self._each("close", status)


def build_mirror(spec: TrackerSpec, out_dir: Path, *, run_name: str, run_key: str, params: dict[str, Any]) -> Any:
    """The mirror `spec` asks for, writing under `out_dir` where it writes locally (see TrackerSpec)."""
    local = spec.local_path(out_dir)
    if spec.kind == "tensorboard":
        return TensorBoardMirror(local)
    uri, artifacts = spec.uri, None
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{local.resolve()}", (local.parent.resolve() / "mlflow-artifacts").as_uri()
    mirror = MLflowMirror(
        uri, spec.experiment, spec.run_name or run_name, params=params, run_key=run_key, artifact_location=artifacts
    )
    return BackgroundMirror(mirror)


def with_mirrors(
    primary: Callback,
    specs: Sequence[TrackerSpec],
    out_dir: Path,
    *,
    run_name: str,
    run_key: str,
    params: dict[str, Any],
    build: Callable[..., Any] = build_mirror,
) -> MirroredCallback:
    """`primary` mirrored to every tracker in `specs`.

    A missing extra raises ImportError naming it, before the run starts (the team asked for the mirror); any other
    failure to start one (e.g. a database it cannot create) is warned about and the run goes on without it.
    """
    mirrors = []
    for spec in specs:
        try:
            mirrors.append(build(spec, Path(out_dir), run_name=run_name, run_key=run_key, params=params))
        except ImportError:
            raise
        except Exception as err:  # a tracker that cannot start never fails the run
            _Warner(spec.kind)("start", err)
    return MirroredCallback(primary, mirrors)


@contextmanager
def mirrored(
    primary: Callback,
    config: Any,
    out_dir: Path,
    *,
    run_name: str,
    run_key: str,
    allowed_hosts: Sequence[str] | None = (),
    note: Callable[[str], None] = log.warning,
) -> Iterator[Callback]:
    """`primary` mirrored to `config.trackers` (a TrainConfig's) for the `with` block, `primary` itself when there
    are none; then the mirrors end with the run's status: FAILED if the block raised, KILLED if it stopped early,
    else FINISHED.

    Remote MLflow servers not in `allowed_hosts` (default none: the platform's rule, checked again where the run
    executes; None = no check) are left out and said through `note`. A missing extra raises ImportError first.
    """
    specs = list(config.trackers)
    if allowed_hosts is not None and (refused := refused_hosts(specs, allowed_hosts)):
        note(f"trackers left out, MLflow servers not allowed here: {', '.join(refused)} (docs/trackers.md)")
        specs = [spec for spec in specs if not refused_hosts([spec], allowed_hosts)]
    if not specs:
        yield primary
        return
    params = config.model_dump(mode="json")
    callback = with_mirrors(primary, specs, out_dir, run_name=run_name, run_key=run_key, params=params)
    status = "FAILED"
    try:
        yield callback
        status = "KILLED" if callback.stopped else "FINISHED"
    finally:
        callback.close(status)
