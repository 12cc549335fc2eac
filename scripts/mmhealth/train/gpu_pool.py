"""One GPU per training process on a workstation: a pool of lock files, one per visible GPU.

Snakemake's `gpu` resource caps how many GPUs concurrent jobs ask for, but every job would still start on
GPU 0. Each training process (each torchrun rank) therefore takes an exclusive `fcntl` lock on one GPU's
file in the pool folder and sets CUDA_VISIBLE_DEVICES to that GPU before CUDA starts. The kernel drops
the lock when the process exits, however it exits (SIGKILL, out-of-memory kill, node reboot of /tmp), so
no stale lock outlives a crashed job.

The pool folder is MMHEALTH_GPU_LOCKS (default: mmhealth-gpu-locks-<uid> in the temp folder); every job
sharing GPUs must share it, and only jobs on the same host do (on a cluster, the scheduler's own GPU
binding sets CUDA_VISIBLE_DEVICES to one device and the pool has nothing to choose).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("train")
POLL_SECONDS = 5.0


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"mmhealth-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("MMHEALTH_GPU_LOCKS", default))


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists.
    Read without torch: once torch has counted devices, CUDA_VISIBLE_DEVICES no longer takes effect."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def try_claim(gpus: list[str], folder: Path) -> tuple[str, int] | None:
    """(gpu id, open lock fd) for the first GPU of `gpus` no other process holds; None when all are held.
    The fd must stay open for as long as the GPU is used: closing it (or exiting) frees the GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        fd = os.open(folder / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking at the folder
        return gpu, fd
    return None


def claim(gpus: list[str], folder: Path, timeout_s: float | None = None) -> tuple[str, int]:
    """A free GPU of `gpus`, waiting for one while all are held (at most timeout_s, if given)."""
    started = time.monotonic()
    warned = False
    while True:
        got = try_claim(gpus, folder)
        if got is not None:
            return got
        if timeout_s is not None and time.monotonic() - started >= timeout_s:
            raise TimeoutError(f"every GPU of {gpus} is held by another process (locks in {folder})")
        if not warned:
            log.warning("every GPU of %s is held by another job; waiting for one to be released", gpus)
            warned = True
        time.sleep(POLL_SECONDS)


_HELD: list[int] = []  # lock fds held for the life of the process


def claim_for_process() -> str | None:
    """Claim one GPU for this process and make it the only one CUDA shows it (device 0); None on a
    machine without GPUs or when only one is visible (nothing to choose)."""
    gpus = visible_gpus()
    if len(gpus) <= 1:
        return gpus[0] if gpus else None
    gpu, fd = claim(gpus, lock_dir())
    _HELD.append(fd)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("GPU %s of %s claimed (lock in %s)", gpu, ",".join(gpus), lock_dir())
    return gpu
