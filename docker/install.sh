#!/bin/sh
# The one install recipe of both images (docker/Dockerfile), the Makefile's CPU recipe with a choice of torch build:
#   install.sh torch          a venv at $VENV with $TORCH_SPEC from $TORCH_INDEX_URL; checks the build is $TORCH_EXPECT
#   install.sh project SRC    the project into that venv; torch stays exactly the build installed above
#   install.sh user           the non-root user flowdppo ($APP_UID) that owns /data; /models for mounted weights
# Two steps so that the torch layer (GBs for CUDA) stays cached while the code changes.
set -eu

VENV="${VENV:-/opt/venv}"
PIP="$VENV/bin/pip"

torch_version() {
    "$VENV/bin/python" -c 'import torch; print(torch.__version__)'
}

case "${1:-}" in
user)
    : "${APP_UID:?build arg APP_UID is required}"
    groupadd --gid "$APP_UID" flowdppo
    useradd --uid "$APP_UID" --gid "$APP_UID" --create-home --shell /usr/sbin/nologin flowdppo
    mkdir -p /data /models
    chown flowdppo:flowdppo /data
    ;;
torch)
    : "${TORCH_SPEC:?build arg TORCH_SPEC is required, e.g. torch==2.13.0}"
    : "${TORCH_INDEX_URL:?build arg TORCH_INDEX_URL is required (the PyTorch index of the cpu or cuNNN build)}"
    : "${TORCH_EXPECT:?build arg TORCH_EXPECT is required: cpu or cuda}"
    python3 -m venv "$VENV"
    "$PIP" install --no-cache-dir --upgrade pip
    "$PIP" install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
    # The api image must not carry a CUDA build (GBs), and the worker must not silently get a CPU one.
    "$VENV/bin/python" - "$TORCH_EXPECT" <<'EOF'
import sys

import torch

expect, cuda = sys.argv[1], torch.version.cuda
if (expect == "cuda") != (cuda is not None):
    sys.exit(f"expected a {expect} build of torch, got {torch.__version__} (CUDA {cuda})")
EOF
    ;;
project)
    src="${2:?usage: install.sh project SRC}"
    before="$(torch_version)"
    # Pinning the installed build makes resolving the project's `torch>=...` a no-op, never a replacement.
    constraint="$(mktemp)"
    echo "torch==$before" >"$constraint"
    # [trackers]: a run's config may mirror to TensorBoard/MLflow (docs/trackers.md); the worker needs the libraries.
    "$PIP" install --no-cache-dir --constraint "$constraint" "$src[trackers]"
    rm -f "$constraint"
    after="$(torch_version)"
    if [ "$before" != "$after" ]; then
        echo "pip replaced torch $before with $after" >&2
        exit 1
    fi
    "$VENV/bin/flowdppo" --help >/dev/null
    ;;
*)
    echo "usage: install.sh user | install.sh torch | install.sh project SRC" >&2
    exit 2
    ;;
esac
