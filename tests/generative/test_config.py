"""The generative trainers' shared config: validation names the flag, every field has help."""

from __future__ import annotations

import dataclasses

import pytest

from rlgen.errors import InputError
from rlgen.generative.config import GenerativeTrainConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "--batch-size must be > 0, got 0"),
        ("epochs", 0, "--epochs must be > 0, got 0"),
        ("max_steps", 0, "--max-steps must be > 0"),
        ("learning_rate", -1.0, "--learning-rate must be a finite number > 0, got -1.0"),
        ("learning_rate", float("nan"), "--learning-rate must be a finite number"),
        ("precision", "fp8", "--precision must be one of 32, 16-mixed, bf16-mixed"),
        ("image_size", 4, "--image-size must be >= 8"),
        ("log_every", 0, "--log-every must be > 0"),
        ("sample_every", -1, "--sample-every must be >= 0"),
        ("checkpoint_every", -5, "--checkpoint-every must be >= 0"),
        ("keep_checkpoints", 0, "--keep-checkpoints must be >= 1"),
        ("loader", "magic", "--loader must be tensor or dataloader"),
        ("num_workers", -1, "--num-workers must be >= 0"),
        ("dist_timeout_s", 0, "--dist-timeout-s must be > 0"),
    ],
)
def test_config_validation_names_the_flag(field, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        GenerativeTrainConfig(**{field: value})


def test_every_config_field_has_help_text():
    from rlgen.cli import field_docs

    docs = field_docs(GenerativeTrainConfig)
    missing = [f.name for f in dataclasses.fields(GenerativeTrainConfig) if not docs.get(f.name)]
    assert missing == []
