"""The README's commands are the user's first contact: every `rlgen train|eval|sample` line in it
must parse with the current flags, and .ci/run must run the README's test command."""

import re
import shlex
from pathlib import Path

import pytest

from rlgen.cli import parse_config
from rlgen.registry import TRAINERS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    """Text of the README's ``` / ```bash blocks (not python or toml ones)."""
    blocks, current, lang = [], None, None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _readme_commands() -> list[list[str]]:
    commands = []
    for block in _shell_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("#")[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["torchrun"] and "-m" in words:  # torchrun ... -m rlgen train
                    words = words[words.index("-m") + 1:]
                if len(words) > 2 and words[0].endswith("rlgen") and words[1] in (
                    "train", "eval", "sample", "predict"
                ) and not words[2].isupper():  # NAME is a placeholder
                    commands.append(words[1:])
    return commands


COMMANDS = _readme_commands()


def test_readme_has_commands_for_every_trainer():
    names = {(cmd, name) for cmd, name, *_ in COMMANDS}
    for trainer in ("dqn", "vae", "autoencoder", "dcgan", "classifier"):
        assert ("train", trainer) in names
        assert ("eval", trainer) in names
    assert ("predict", "classifier") in names
    for trainer in ("vae", "autoencoder", "dcgan"):
        assert ("sample", trainer) in names


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_parses(argv):
    command, name, *flags = argv
    spec = TRAINERS.create(name)
    if command == "train":
        config_cls = spec.config
    else:
        config_cls = {"eval": spec.evaluate, "sample": spec.sample,
                      "predict": spec.predict}[command][0]
    try:
        parse_config(config_cls, flags, f"rlgen {command} {name}")
    except ValueError as exc:
        # Device flags in the README are for CUDA machines; everything else must validate.
        if "CUDA" not in str(exc):
            raise


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
    block = re.search(r"<!-- test-command -->\n```\n(.*?)\n```", README, flags=re.S)
    assert block and "pytest" in block.group(1) and "pip install torch==2.13.0" in block.group(1)


def test_readme_torchrun_commands_parse():
    launched = [c for c in COMMANDS if "--sync-batchnorm" in c or "--no-batch-norm" in c]
    assert len(launched) >= 2  # the Scaling-out section's commands are among those checked


def test_readme_own_trainer_example_runs(tmp_path, monkeypatch):
    """The 'your own trainer' example of the Core section trains, checkpoints and resumes."""
    start = README.index("from dataclasses import dataclass\nimport torch\nfrom rlgen.data.batches")
    code = README[start:README.index("```", start)]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    checkpoints = sorted((tmp_path / "runs" / "regression" / "checkpoints").glob("ckpt_*.pt"))
    assert [p.name for p in checkpoints] == ["ckpt_000000032.pt"]  # 2 epochs of 1024 / 64
    result = namespace["train"](namespace["RegressionConfig"](resume="runs/regression",
                                                              epochs=3))
    assert result["step"] == 48


def _readme_tool_commands() -> list[list[str]]:
    commands = []
    for block in _shell_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#")[0]) if line.strip() else []
            if len(words) > 1 and words[0] == "rlgen" and words[1] in ("style", "caption"):
                commands.append(words[1:])
    return commands


def test_readme_tool_commands_parse():
    from rlgen.registry import TOOLS

    commands = _readme_tool_commands()
    assert commands, "the README shows `rlgen style`"
    for name, *flags in commands:
        spec = TOOLS.create(name)
        parse_config(spec.config, flags, f"rlgen {name}")
