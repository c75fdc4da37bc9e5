"""A 2-process torchrun job on 2 GPUs (NCCL) computes what 1 process does, batch norm included.

Needs 2 CUDA devices. Run on such a machine from the repo root: `python -m pytest -q gpu_tests`.
Like every test in gpu_tests/, it fails (not skips) when what it needs is missing, naming it; on
a machine with one GPU leave this file out by name:
`python -m pytest -q gpu_tests --ignore=gpu_tests/test_multi_gpu.py`.

tests/test_distributed.py checks on CPUs (gloo) that 2 processes equal 1 for nets *without*
batch norm, since PyTorch has no SyncBatchNorm on CPUs. Here the VAE keeps its batch norm and
the 2-process job runs with ``--device cuda --sync-batchnorm``: each process normalises its 16
rows with the statistics of the global batch of 32, so after 4 steps its parameters and
running statistics equal a 1-process run's on one GPU up to float rounding (ATOL / RTOL below:
10x the CPU test's, for cuDNN picking other kernels for 16 rows than for 32 and its
non-deterministic backward; TF32 is off in every process, ``NVIDIA_TF32_OVERRIDE=0``). The
same job without ``--sync-batchnorm`` must differ by more than that, which shows the
tolerance can see batch-norm statistics of 16 rows instead of 32.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlgen.checkpoint import load_checkpoint

ATOL, RTOL = 1e-4, 1e-3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLGEN_DEBUG": "", "NVIDIA_TF32_OVERRIDE": "0"}
VAE = ["train", "vae", "--dataset", "mnist-subset", "--batch-size", "32", "--width", "8",
       "--latent-dim", "4", "--batch-norm", "--binarize", "dynamic", "--eval-images", "0",
       "--sample-every", "0", "--log-every", "2", "--max-steps", "4", "--device", "cuda"]


@pytest.fixture(autouse=True)
def _needs_two_gpus():
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert found >= 2, (
        f"gpu_tests/test_multi_gpu.py needs 2 CUDA devices, found {found}; on a machine with "
        "fewer, run the other GPU tests with --ignore=gpu_tests/test_multi_gpu.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def one_process(args: list[str], cwd: Path) -> None:
    """The command in one fresh process on GPU 0 (TF32 off, as in the torchrun job)."""
    run([sys.executable, "-m", "rlgen", *args], cwd)


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "rlgen",
                *args], cwd)


def model_state(run_dir: Path, step: int) -> dict:
    state = load_checkpoint(run_dir / "checkpoints" / f"ckpt_{step:09d}.pt")
    assert state["step"] == step
    return state


def test_vae_two_gpus_with_sync_batchnorm_equal_one_gpu(tmp_path):
    one_process([*VAE, "--run-dir", "one"], tmp_path)
    done = torchrun([*VAE, "--sync-batchnorm", "--run-dir", "two"], tmp_path)
    assert done.stdout.count("vae: 4 steps") == 1  # one summary line, from rank 0
    one, two = model_state(tmp_path / "one", 4), model_state(tmp_path / "two", 4)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["config"]["sync_batchnorm"] is True
    weights = one["state"]["model"]
    assert any("running_mean" in key for key in weights)  # batch norm is on
    assert weights.keys() == two["state"]["model"].keys()
    for key, value in weights.items():
        torch.testing.assert_close(two["state"]["model"][key], value, atol=ATOL, rtol=RTOL,
                                   msg=key)

    # without SyncBatchNorm each process normalises its own 16 rows: visibly another run
    torchrun([*VAE, "--run-dir", "local_bn"], tmp_path)
    local = model_state(tmp_path / "local_bn", 4)["state"]["model"]
    differs = [key for key, value in weights.items() if value.is_floating_point()
               and not torch.allclose(local[key], value, atol=ATOL, rtol=RTOL)]
    assert differs, "per-process batch norm gave the 1-process result: the check is blind"
