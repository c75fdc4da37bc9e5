import json
from dataclasses import dataclass

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlgen.data.images import make_grid, save_image
from rlgen.logger import RunLogger, make_run_dir


@dataclass
class DemoConfig:
    lr: float = 1e-3
    name: str = "demo"
    steps: int | None = None


def _events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0,
                                                        "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_run_dir_naming(tmp_path):
    path = make_run_dir("dqn", "breakout", 3, root=tmp_path)
    assert path.parent == tmp_path
    task, name, seed, stamp = path.name.split("__")
    assert (task, name, seed) == ("dqn", "breakout", "3") and stamp.isdigit()


def test_scalars_images_histograms_text_and_files(tmp_path):
    cfg = DemoConfig()
    with RunLogger(tmp_path / "run", config=cfg, total_steps=10, progress=False) as log:
        for step in range(3):
            log.scalar("charts/episodic_return", 10.0 * step, step)
            log.scalars({"losses/td_loss": torch.tensor(0.5 / (step + 1))}, step)
        log.image_grid("samples/generated", torch.rand(6, 1, 8, 8), step=2, nrow=3)
        log.histogram("weights/fc", torch.randn(100), step=2)
        log.text("notes", "hello", step=2)
        log.progress(3, SPS=12.5)
    acc = _events(tmp_path / "run")
    returns = [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
    assert returns == [(0, 0.0), (1, 10.0), (2, 20.0)]
    assert [round(e.value, 4) for e in acc.Scalars("losses/td_loss")] == [0.5, 0.25, 0.1667]
    image = acc.Images("samples/generated")[0]
    assert (image.width, image.height) == (3 * 10 + 2, 2 * 10 + 2)
    assert acc.Histograms("weights/fc")[0].histogram_value.num == 100
    assert "notes/text_summary" in acc.Tags()["tensors"]

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {
        k: lines[2][k] for k in ("step", "tag", "value")
    } == {"step": 1, "tag": "charts/episodic_return", "value": 10.0}
    assert len(lines) == 6
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {
        "lr": 1e-3, "name": "demo", "steps": None}


def test_hparams_are_written_with_final_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    with RunLogger(tmp_path / "run", config=DemoConfig(), progress=False) as log:
        log.hparams({"eval/episodic_return": 42.0})
    values = [v for path in (tmp_path / "run").rglob("events.out.tfevents.*")
              for event in EventFileLoader(str(path)).Load() for v in event.summary.value]
    by_tag = {v.tag: v for v in values}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        by_tag["_hparams_/session_start_info"].metadata.plugin_data.content)
    hparams = start.session_start_info.hparams
    assert hparams["lr"].number_value == 1e-3
    assert hparams["name"].string_value == "demo"
    assert hparams["steps"].string_value == "None"
    final = by_tag["eval/episodic_return"]
    assert (final.simple_value or final.tensor.float_val[0]) == 42.0


def test_progress_bar_is_quiet_without_a_terminal(tmp_path, capsys):
    with RunLogger(tmp_path / "run", total_steps=100) as log:  # pytest's stdout is no TTY
        log.progress(50, SPS=1.0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_shows_rate_when_forced(tmp_path, capsys):
    with RunLogger(tmp_path / "run", total_steps=100, progress=True, description="dqn") as log:
        log.progress(50, SPS=1.0)
    err = capsys.readouterr().err
    assert "dqn" in err and "50/100" in err and "SPS=1" in err


def test_make_grid_and_save_image(tmp_path):
    images = torch.zeros(5, 3, 4, 4)
    images[1] = 1.0
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 5 + 1)
    assert grid[:, 1:5, 6:10].eq(1).all() and grid[:, 1:5, 1:5].eq(0).all()
    path = save_image(torch.rand(4, 1, 8, 8), tmp_path / "grid.png", nrow=2)
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (2 * 10 + 2, 2 * 10 + 2)
