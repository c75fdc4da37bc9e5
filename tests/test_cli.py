import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import pytest

import rlgen
from rlgen.cli import main
from rlgen.cli_spec import TrainerSpec
from rlgen.registry import TRAINERS


@dataclass
class ToyConfig:
    """Train a toy thing."""

    env_id: str = "CartPole-v1"
    """the environment id"""
    learning_rate: float = 2.5e-4
    """the optimizer's learning rate"""
    total_timesteps: int = 1000
    """how many environment steps to take"""
    double: bool = False
    """use Double DQN targets"""
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    """numerical precision"""
    resume: str | None = None
    """a run directory to continue"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer sizes"""

    __cli_aliases__ = {"env_id": ("--env",)}

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")


received = []


@pytest.fixture
def toy_trainer():
    @TRAINERS.register("toy")
    def toy():
        """A toy trainer for the CLI tests."""
        return TrainerSpec(config=ToyConfig, train=received.append,
                           evaluate=(ToyConfig, lambda c: received.append(("eval", c))))

    received.clear()
    yield
    TRAINERS.unregister("toy")


def test_flags_are_generated_from_the_dataclass(toy_trainer):
    assert main(["train", "toy", "--env", "ALE/Pong-v5", "--learning-rate", "1e-3",
                 "--double", "--precision", "bf16-mixed", "--resume", "runs/x",
                 "--hidden", "32", "16"]) == 0
    assert received == [ToyConfig(env_id="ALE/Pong-v5", learning_rate=1e-3, double=True,
                                  precision="bf16-mixed", resume="runs/x", hidden=(32, 16))]
    assert main(["eval", "toy", "--no-double", "--resume", "None"]) == 0
    assert received[-1] == ("eval", ToyConfig())


def test_help_lists_fields_with_help_and_defaults(toy_trainer, capsys):
    assert main(["train", "toy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--learning-rate FLOAT" in out and "the optimizer's learning rate" in out
    assert "(default: 0.00025)" in out
    assert "--env-id STR, --env STR" in out
    assert "{32,16-mixed,bf16-mixed}" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "toy", "--learning-rate", "fast"],
         "--learning-rate: expected a number, got 'fast'"),
        (["train", "toy", "--total-timesteps", "1.5"], "expected an integer, got '1.5'"),
        (["train", "toy", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["train", "toy", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["train", "toy", "--learning-rate", "-1"], "--learning-rate must be > 0, got -1.0"),
        (["train", "toyy"], "unknown trainer 'toyy'; closest: toy"),
        (["sample", "toy"], "toy has no `sample` command"),
        (["list", "widgets"], "invalid choice: 'widgets'"),
        (["train"], "say what to run"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(toy_trainer, capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1, err
    assert received == []


def test_list_backbones_prints_parameters_and_feature_info(capsys):
    assert main(["list", "backbones"]) == 0
    out = capsys.readouterr().out
    resnet18 = next(line for line in out.splitlines() if line.split()[:1] == ["resnet18"])
    assert "11,176,512 params" in resnet18  # torchvision's 11,689,512 minus the 1000-class fc
    assert "layer4:512/32" in resnet18


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "rlgen.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"rlgen {rlgen.__version__}"
