"""The shared training run on a toy trainer (linear regression): run directories, resume with
config overrides, periodic checkpoints, stop signals, a failed checkpoint write, a diverged
loss, off-terminal progress lines, hparams and the summary."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from rlgen.checkpoint import CheckpointError, load_checkpoint
from rlgen.data.batches import TensorBatches
from rlgen.errors import InputError
from rlgen.runtime import NonFiniteLossError, Precision
from rlgen.training import RunStopped, TrainConfig, TrainingRun, resume_config, total_steps


@dataclass
class ToyConfig(TrainConfig):
    """A linear regression trained through the shared run."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (*TrainConfig.fixed_on_resume, "features")

    features: int = 3
    """input features"""
    learning_rate: float = 0.05
    """SGD learning rate"""
    poison_step: int = 0
    """make the loss NaN at this step (0: never)"""


def toy_data(n=64, features=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return x, x @ torch.arange(1.0, features + 1) + 0.5


def toy_train(config: ToyConfig, on_step=None) -> dict:
    with TrainingRun("toy", config, name="regression", progress=False) as run:
        config = run.config
        model = nn.Linear(config.features, 1).to(run.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
        precision = Precision(config.precision, run.device)
        x, y = toy_data(features=config.features)
        data = TensorBatches(x, y, config.batch_size, **run.shard_args())
        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer": optimizer, "precision": precision},
                  meta={"features": config.features}, items_per_step=data.batch_size,
                  items_name="rows")
        net = run.prepare(model)
        step = run.start_step
        for step, (xb, yb) in run.steps(data):
            loss = (net(xb).squeeze(1) - yb).pow(2).mean()
            if step == config.poison_step:
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)
            if run.due(step, config.log_every):
                run.log(step, {"train/loss": loss}, show=("train/loss",))
            if on_step is not None:
                on_step(step)
        return run.finish(step, {"final/weight_sum": float(model.weight.detach().sum())})


def toy(tmp_path, **overrides) -> ToyConfig:
    settings = dict(batch_size=16, epochs=3, log_every=2, checkpoint_every=0, device="cpu",
                    run_dir=str(tmp_path / "run"))
    settings.update(overrides)
    return ToyConfig(**settings)


def weights(checkpoint) -> dict:
    return load_checkpoint(checkpoint)["state"]["model"]


def test_a_run_trains_writes_its_directory_and_a_checkpoint_of_everything(tmp_path):
    result = toy_train(toy(tmp_path))
    run_dir = Path(result["run_dir"])
    assert result["step"] == 12 == 3 * (64 // 16)
    state = load_checkpoint(result["checkpoint"])
    assert state["format"] == "rlgen.run/1" and state["task"] == "toy" and state["step"] == 12
    assert set(state["state"]) == {"model", "optimizer", "precision"}
    assert state["meta"] == {"features": 3} and state["config"]["features"] == 3
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 16
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    losses = [r["value"] for r in records if r["tag"] == "train/loss"]
    assert [r["step"] for r in records if r["tag"] == "train/loss"] == [2, 4, 6, 8, 10, 12]
    assert losses[-1] < 0.2 * losses[0]  # it learned
    assert any(r["tag"] == "charts/rows_per_s" and r["value"] > 0 for r in records)


def test_default_run_directory_is_named_task_name_seed_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = toy_train(toy(tmp_path, run_dir=None, seed=7, epochs=1))
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == Path("runs")
    task, name, seed, stamp = run_dir.name.split("__")
    assert (task, name, seed) == ("toy", "regression", "7") and stamp.isdigit()


def test_resume_continues_exactly_with_overrides_and_keeps_the_directory(tmp_path):
    full = toy_train(toy(tmp_path, run_dir=str(tmp_path / "full"), epochs=4))
    part = toy_train(toy(tmp_path, run_dir=str(tmp_path / "part"), epochs=2))
    # only what changes is given: the saved config supplies the rest (batch size, lr, ...)
    resumed = toy_train(ToyConfig(resume=str(tmp_path / "part"), epochs=4))
    assert resumed["run_dir"] == part["run_dir"] and resumed["step"] == full["step"] == 16
    for key, value in weights(full["checkpoint"]).items():
        assert torch.equal(weights(resumed["checkpoint"])[key], value), key
    saved = load_checkpoint(resumed["checkpoint"])["config"]
    assert saved["epochs"] == 4 and saved["batch_size"] == 16  # merged, not the defaults
    # a checkpoint file works as well as a run directory
    again = toy_train(ToyConfig(resume=part["checkpoint"], epochs=3,
                                run_dir=str(tmp_path / "branch")))
    assert again["step"] == 12 and Path(again["run_dir"]).name == "branch"


def test_resume_refuses_a_changed_model_a_foreign_task_and_junk(tmp_path):
    part = toy_train(toy(tmp_path, epochs=1))
    with pytest.raises(InputError, match="--features cannot change when resuming "
                                         r"\(the run used 3, got 5\)"):
        toy_train(ToyConfig(resume=part["run_dir"], features=5))
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    state = load_checkpoint(part["checkpoint"])
    torch.save({**state, "task": "vae"}, foreign / "checkpoints" / "ckpt_000000001.pt")
    with pytest.raises(CheckpointError, match="holds a 'vae' run, not a 'toy' one"):
        toy_train(ToyConfig(resume=str(foreign)))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an rlgen training checkpoint"):
        toy_train(ToyConfig(resume=str(tmp_path / "plain.pt")))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        toy_train(ToyConfig(resume=str(tmp_path)))


def test_resume_config_merges_given_fields_over_the_saved_ones():
    saved = dataclasses.asdict(ToyConfig(batch_size=16, epochs=2, learning_rate=0.1))
    merged = resume_config(ToyConfig(resume="r", epochs=5), saved)
    assert (merged.epochs, merged.batch_size, merged.learning_rate, merged.resume) == \
        (5, 16, 0.1, "r")
    with pytest.raises(InputError, match="--batch-size cannot change"):
        resume_config(ToyConfig(resume="r", batch_size=32), saved)


def test_periodic_checkpoints_keep_the_newest_k(tmp_path):
    result = toy_train(toy(tmp_path, checkpoint_every=3, keep_checkpoints=2))
    names = sorted(p.name for p in (Path(result["run_dir"]) / "checkpoints").iterdir())
    assert names == ["ckpt_000000009.pt", "ckpt_000000012.pt"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_finishes_the_step_checkpoints_and_resume_matches(tmp_path, signum):
    def stop_at_5(step):
        if step == 5:
            signal.raise_signal(signum)

    full = toy_train(toy(tmp_path, run_dir=str(tmp_path / "full")))
    with pytest.raises(RunStopped):
        toy_train(toy(tmp_path, run_dir=str(tmp_path / "part")), on_step=stop_at_5)
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)
    assert load_checkpoint(tmp_path / "part")["step"] == 5
    resumed = toy_train(ToyConfig(resume=str(tmp_path / "part")))
    for key, value in weights(full["checkpoint"]).items():
        assert torch.equal(weights(resumed["checkpoint"])[key], value), key


def test_a_failed_checkpoint_write_names_the_directory_and_keeps_the_previous(tmp_path,
                                                                               monkeypatch):
    real_save, calls = torch.save, [0]

    def disk_full_on_second(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second)
    with pytest.raises(CheckpointError, match=r"cannot write the step-8 checkpoint to .*"
                                              r"checkpoints .*No space left.*ckpt_000000004.pt "
                                              r"is intact"):
        toy_train(toy(tmp_path, checkpoint_every=4))
    monkeypatch.undo()
    directory = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["ckpt_000000004.pt"]  # no debris
    assert load_checkpoint(tmp_path / "run")["step"] == 4


def test_a_nan_loss_in_fp32_stops_naming_the_step_and_saves_nothing_broken(tmp_path):
    with pytest.raises(NonFiniteLossError, match="toy stopped at step 6: .*NaN or inf.*"
                                                 "the last checkpoint is .*ckpt_000000004"):
        toy_train(toy(tmp_path, checkpoint_every=4, poison_step=6))
    assert load_checkpoint(tmp_path / "run")["step"] == 4
    for value in weights(tmp_path / "run").values():
        assert torch.isfinite(value).all()


def test_off_a_terminal_progress_is_a_plain_line_every_interval(tmp_path, capsys):
    toy_train(toy(tmp_path, log_interval_s=1e-9, log_every=4))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("toy")]
    progress = [line for line in lines if "step/s" in line]
    assert len(progress) == 3  # one per log call: steps 4, 8, 12
    assert progress[0].startswith("toy 4/12 (33.3%)") and "ETA" in progress[0]
    assert "loss=" in progress[0]
    summary = lines[-1]
    assert summary.startswith("toy: 12 steps, final/weight_sum") and "ckpt_000000012.pt" in summary


def test_hparams_hold_the_config_and_the_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = toy_train(toy(tmp_path, epochs=1))
    found = set()
    for events in Path(result["run_dir"]).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        found |= set(acc.Tags()["scalars"])
    assert "final/weight_sum" in found and "train/loss" in found


def test_a_one_process_trainer_refuses_torchrun(tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
    with pytest.raises(InputError, match="dqn trains in one process"), \
            TrainingRun("dqn", toy(tmp_path), distributed=False):
        pass


def test_a_learning_rate_given_with_resume_takes_effect(tmp_path):
    """The optimizer's moments come back from the checkpoint, its hyperparameters from the
    config: a new --learning-rate on resume is used, not overwritten by the saved one."""
    part = toy_train(toy(tmp_path, epochs=1, learning_rate=0.05))
    resumed = toy_train(ToyConfig(resume=part["run_dir"], epochs=2, learning_rate=0.01))
    optimizer = load_checkpoint(resumed["checkpoint"])["state"]["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == 0.01
    kept = toy_train(ToyConfig(resume=part["checkpoint"], epochs=3,
                               run_dir=str(tmp_path / "kept")))  # saved with lr 0.05
    assert load_checkpoint(kept["checkpoint"])["state"]["optimizer"]["param_groups"][0]["lr"] \
        == 0.05


def test_resume_rewrites_what_the_stopped_run_logged_after_its_checkpoint(tmp_path):
    """metrics.jsonl keeps one timeline, as TensorBoard does with purge_step: records a
    stopped run wrote after its last checkpoint are dropped when it is resumed from there."""
    toy_train(toy(tmp_path, epochs=2, checkpoint_every=4, log_every=1))
    for checkpoint in sorted((tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))[-1:]:
        checkpoint.unlink()  # as if the run had died after step 4's checkpoint
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "tag": "train/loss", "va')  # and mid-write
    toy_train(ToyConfig(resume=str(tmp_path / "run"), epochs=2))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()
             if '"train/loss"' in line]
    assert steps == list(range(1, 9))  # 1..4 from the first run, 5..8 once, from the resume


def test_a_moved_run_resumes_where_it_is_now(tmp_path):
    first = toy_train(toy(tmp_path, epochs=1, run_dir=str(tmp_path / "cluster")))
    (tmp_path / "cluster").rename(tmp_path / "laptop")
    resumed = toy_train(ToyConfig(resume=str(tmp_path / "laptop"), epochs=2))
    assert Path(resumed["run_dir"]) == tmp_path / "laptop" and first["step"] == 4
    assert not (tmp_path / "cluster").exists()
