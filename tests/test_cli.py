import errno
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import pytest

import rlgen
from rlgen.checkpoint import CheckpointError
from rlgen.cli import UsageError, main
from rlgen.cli_spec import TrainerSpec
from rlgen.errors import InputError
from rlgen.registry import TRAINERS, UnknownNameError
from rlgen.vision.backbones.base import BackboneInputError
from rlgen.vision.backbones.weights import WeightsError


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


# -- error policy: input errors are one line (exit 2), bugs keep their traceback (exit 1) -------
@dataclass
class BoomConfig:
    """A trainer that fails in training."""

    error: str = "index"
    """which exception the training raises"""


def _raise_in_training(kind: str) -> None:
    if kind == "index":
        [][1]  # a genuine bug
    errors = {
        "value": ValueError("operands could not be broadcast together"),  # a bug, not input
        "input": InputError("--x must be a positive number, got -3\nsecond line"),
        "checkpoint": CheckpointError("runs/x holds no checkpoint"),
        "unknown": UnknownNameError("unknown backbone 'resnet19'; closest: resnet18"),
        "backbone": BackboneInputError("resnet18 needs inputs of at least 32x32, got 8x8"),
        "weights": WeightsError("weights.pt has no key 'fc.weight'"),
        "missing": FileNotFoundError(errno.ENOENT, "No such file or directory", "data/x.npz"),
        "directory": IsADirectoryError(errno.EISDIR, "Is a directory", "runs"),
        "disk": OSError(errno.ENOSPC, "No space left on device"),
        "interrupt": KeyboardInterrupt(),
    }
    raise errors[kind]


def explode_in_training(config: BoomConfig) -> None:
    _raise_in_training(config.error)


@pytest.fixture
def boom_trainer():
    @TRAINERS.register("boom")
    def boom():
        """A trainer whose training raises."""
        return TrainerSpec(config=BoomConfig, train=explode_in_training)

    yield
    TRAINERS.unregister("boom")


@pytest.fixture
def no_debug_env(monkeypatch):
    monkeypatch.delenv("RLGEN_DEBUG", raising=False)


@pytest.mark.parametrize("error", ["index", "value"])
def test_a_bug_keeps_its_traceback_and_exits_1(boom_trainer, no_debug_env, capsys, error):
    assert main(["train", "boom", "--error", error]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "in explode_in_training" in err and "in _raise_in_training" in err
    last = err.strip().splitlines()[-1]
    kind = {"index": "IndexError", "value": "ValueError"}[error]
    assert last.startswith(f"error: {kind}: ")
    assert "a bug in rlgen or a plugin?" in last and "RLGEN_DEBUG=1" in last


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("input", "error: --x must be a positive number, got -3"),
        ("checkpoint", "error: runs/x holds no checkpoint"),
        ("unknown", "error: unknown backbone 'resnet19'; closest: resnet18"),
        ("backbone", "error: resnet18 needs inputs of at least 32x32, got 8x8"),
        ("weights", "error: weights.pt has no key 'fc.weight'"),
        ("missing", "error: [Errno 2] No such file or directory: 'data/x.npz'"),
        ("directory", "error: [Errno 21] Is a directory: 'runs'"),
    ],
)
def test_input_errors_from_inside_a_command_are_one_line_and_exit_2(
    boom_trainer, no_debug_env, capsys, error, expected
):
    assert main(["train", "boom", "--error", error]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [expected]


def test_other_os_errors_are_one_line_and_exit_1(boom_trainer, no_debug_env, capsys):
    assert main(["train", "boom", "--error", "disk"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: OSError: [Errno 28] No space left on device (rlgen --debug shows the traceback)"
    ]


def test_a_config_validation_error_is_one_line_and_exit_2(toy_trainer, no_debug_env, capsys):
    assert main(["train", "toy", "--learning-rate", "0"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["rlgen train toy: --learning-rate must be > 0, got 0.0"]
    assert received == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_reraises_input_errors(boom_trainer, toy_trainer, no_debug_env, monkeypatch, how):
    argv = ["train", "boom", "--error", "input"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("RLGEN_DEBUG", "1")
    with pytest.raises(InputError, match="--x must be a positive number"):
        main(argv)
    with pytest.raises(IndexError):
        main([*argv[:-1], "index"])
    with pytest.raises(UsageError, match="--learning-rate must be > 0") as info:
        main([*argv[:-4], "train", "toy", "--learning-rate", "-1"])
    assert isinstance(info.value.__cause__, ValueError)


def test_debug_env_off_values_and_debug_after_the_command(boom_trainer, monkeypatch, capsys):
    monkeypatch.setenv("RLGEN_DEBUG", "0")
    assert main(["train", "boom", "--error", "input"]) == 2
    capsys.readouterr()
    monkeypatch.delenv("RLGEN_DEBUG")
    # --debug belongs before the command; after it, it is the trainer's (unknown) flag
    assert main(["train", "boom", "--debug"]) == 2
    assert "unrecognized arguments: --debug" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(boom_trainer, no_debug_env, capsys):
    assert main(["train", "boom", "--error", "interrupt"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert main(["--debug", "train", "boom", "--error", "interrupt"]) == 130
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("interrupted")


def test_debug_flag_is_in_the_help(capsys):
    assert main(["--help"]) == 0
    assert "--debug" in capsys.readouterr().out


def test_a_registered_tool_is_a_command_of_its_own(capsys):
    """`rlgen NAME ...` runs a ToolSpec from rlgen.registry.TOOLS (rlgen style, ...)."""
    from dataclasses import dataclass

    from rlgen.cli import main
    from rlgen.cli_spec import ToolSpec
    from rlgen.registry import TOOLS

    @dataclass
    class EchoConfig:
        word: str = "hi"
        """what to print"""

    @TOOLS.register("echo_tool")
    def echo_tool():
        """Print a word."""
        return ToolSpec(config=EchoConfig, run=lambda c: print(f"echo {c.word}"))

    try:
        assert main(["echo_tool", "--word", "ok"]) == 0
        assert capsys.readouterr().out.strip() == "echo ok"
        assert main(["echo_tool", "--nope", "1"]) == 2
        assert "rlgen echo_tool: unrecognized arguments: --nope" in capsys.readouterr().err
        assert main(["nosuchtool"]) == 2
        err = capsys.readouterr().err
        commands = "choose from train, eval, sample, predict, list, "
        assert f"unknown command 'nosuchtool'; {commands}" in err
        tools = err.split(commands)[1].split("\n")[0]
        assert {"echo_tool", "caption", "style"} <= set(tools.replace(",", " ").split()), err
    finally:
        TOOLS.unregister("echo_tool")
