"""Starting the ranks of one run (spec §12): `flowdppo train --nproc-per-node N` runs N local ranks under torchrun.

One node: `torchrun --standalone --nproc-per-node N --max-restarts 0 -m flowdppo train ...` (what the CLI runs).
K nodes: the same command on every node with the c10d rendezvous on the first one, no other service needed:

    torchrun --nnodes K --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id RUN \\
        --max-restarts 0 -m flowdppo train PRESET --set num_processes=K*N --out SHARED_DIR

`--max-restarts 0`: a failed rank ends the attempt; the retry (the platform's, or the user's next command) resumes
from the last checkpoint in the output folder, which every node must see (a shared filesystem).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def under_torchrun() -> bool:
    """True inside a rank torchrun started (it sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_command(
    config: str, overrides: list[str], out: Path, device: str, nproc: int, module: str = "flowdppo"
) -> list[str]:
    """The torchrun command running `flowdppo train` as `nproc` local ranks of one run on this machine."""
    sets = [arg for pair in overrides for arg in ("--set", pair)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        module,
        "train",
        config,
        *sets,
        "--set",
        f"num_processes={nproc}",
        "--out",
        str(out),
        "--device",
        device,
    ]
