"""``rlgen train|eval captioning`` and ``rlgen caption``: NIC (Vinyals et al. 2015) trained
through the shared run (precision, TensorBoard, resume, torchrun come from there).

Each step draws a batch of (image, caption) pairs from every caption of every training image,
with the seeded, resumable batch order; the loss is the cross-entropy of the next word under
teacher forcing (padding never counts). The vocabulary (built from the training captions with
``--min-count``) goes into the checkpoint's ``meta`` with the model's settings. The run ends
with corpus BLEU-1..4 of beam-search captions on the test split against all its reference
captions (NLTK's convention, see ``bleu.py``); TensorBoard shows sample images with their
generated and true captions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlgen.errors import InputError
from rlgen.registry import TOOLS, TRAINERS
from rlgen.training import TrainConfig, TrainingRun, check, total_steps

#: the datasets with captions that rlgen ships (a plugin's dataset with ``captions`` works too)
CAPTION_DATASETS = ("coco-captions", "flickr8k", "caption-shapes")
#: short names accepted by ``--dataset`` (``shapes`` alone is the classification dataset)
DATASET_ALIASES = {"coco": "coco-captions", "shapes": "caption-shapes"}


def dataset_name(name: str) -> str:
    """The registered name of a captioning ``--dataset`` (``coco`` and ``shapes`` are short for
    ``coco-captions`` and ``caption-shapes``)."""
    return DATASET_ALIASES.get(name, name)


def _check_caption_dataset(name: str) -> None:
    """Refuse, before reading anything, a built-in dataset without captions (a plugin's is
    checked once loaded: it must have ``captions``)."""
    from rlgen.registry import DATASETS

    builder = DATASETS.get(name)  # an unknown name lists the closest ones
    if name not in CAPTION_DATASETS and getattr(builder, "__module__", "").startswith("rlgen."):
        raise InputError(f"--dataset {name} has no captions; use {', '.join(CAPTION_DATASETS)} "
                         f"(or coco, shapes for short)")


@dataclass
class CaptioningConfig(TrainConfig):
    """Train an image-captioning model (NIC: CNN encoder + LSTM / GRU decoder)."""

    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        *TrainConfig.fixed_on_resume, "dataset", "image_size", "encoder", "rnn", "embed_dim",
        "hidden_dim", "num_layers", "min_count", "max_length", "image_norm",
        "karpathy_split")

    dataset: str = "caption-shapes"
    """dataset with captions: coco-captions (coco), flickr8k, caption-shapes (shapes: the
    generated scenes)"""
    data_root: str = "data"
    """directory holding the dataset files"""
    download: bool = False
    """download the dataset if it is missing"""
    karpathy_split: str | None = None
    """--dataset coco: Karpathy's split file (dataset_coco.json; train on train+restval,
    evaluate on test) instead of the official train2014 / val2014"""
    image_size: int | None = None
    """resize images to this square size (None: the dataset's)"""
    encoder: str = "resnet50"
    """any registered backbone (a user's plugin too)"""
    encoder_weights: str | None = None
    """classifier weights for the encoder: a file (rlgen or torchvision format) or
    torchvision:NAME (then inputs get ImageNet's normalisation)"""
    freeze_encoder: bool = False
    """keep the whole encoder backbone fixed (train the projection and the decoder)"""
    fine_tune_from: int | None = None
    """freeze the encoder's first N stages and fine-tune the rest (None: see --freeze-encoder)"""
    rnn: Literal["lstm", "gru"] = "lstm"
    """the decoder's recurrent cell: lstm (NIC) or gru"""
    embed_dim: int = 512
    """word and image embedding size (NIC: 512)"""
    hidden_dim: int = 512
    """recurrent memory size (NIC: 512)"""
    num_layers: int = 1
    """stacked recurrent layers"""
    image_norm: bool = True
    """batch norm on the projected image vector (--no-image-norm: NIC's plain projection)"""
    dropout: float = 0.5
    """dropout on the embeddings and the recurrent outputs"""
    min_count: int = 1
    """words seen fewer times in the training captions become <unk>"""
    max_length: int = 20
    """longest caption in words, in training (longer ones are cut) and in decoding"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    beam_size: int = 3
    """beam width of the end-of-run evaluation (1: greedy)"""
    length_penalty: float = 0.0
    """beam search ranks captions by log_prob / length ** length_penalty"""
    eval_images: int = 500
    """test images captioned for the end-of-run BLEU (0: skip)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dataset = dataset_name(self.dataset)
        check(self.rnn in ("lstm", "gru"), f"--rnn must be lstm or gru, got {self.rnn!r}")
        check(self.karpathy_split is None or self.dataset == "coco-captions",
              f"--karpathy-split is for --dataset coco, not {self.dataset}")
        check(self.image_size is None or self.image_size >= 16,
              f"--image-size must be >= 16 pixels (or omitted: the dataset's), got "
              f"{self.image_size}")
        for name in ("embed_dim", "hidden_dim", "num_layers", "min_count", "max_length",
                     "beam_size"):
            value = getattr(self, name)
            check(value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
              f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        check(self.fine_tune_from is None or self.fine_tune_from >= 0,
              f"--fine-tune-from must be >= 0, got {self.fine_tune_from}")
        check(not (self.freeze_encoder and self.fine_tune_from is not None),
              "give --freeze-encoder or --fine-tune-from N, not both")
        check(not self.image_norm or self.batch_size >= 2,
              "--image-norm needs --batch-size >= 2 (batch statistics); or --no-image-norm")
        check(self.eval_images >= 0, f"--eval-images must be >= 0, got {self.eval_images}")
        check(self.length_penalty >= 0,
              f"--length-penalty must be >= 0, got {self.length_penalty}")


def _split_options(karpathy_split: str | None) -> dict[str, Any]:
    return {"karpathy": karpathy_split} if karpathy_split else {}


def _freeze_spec(config: CaptioningConfig) -> str | None:
    if config.freeze_encoder:
        return "backbone"
    return f"stages:{config.fine_tune_from}" if config.fine_tune_from else None


def references_of(captions: list[list[str]], vocab) -> list[list[list[str]]]:
    """Each image's reference captions as token lists, tokenised as the vocabulary does."""
    from rlgen.vision.captioning.vocab import tokenize

    return [[tokenize(c, keep_punctuation=vocab.keep_punctuation) for c in caps]
            for caps in captions]


@torch.no_grad()
def caption_images(model, images: torch.Tensor, vocab, beam_size: int = 3, max_length: int = 20,
                   length_penalty: float = 0.0, batch_size: int = 64) -> list[list[str]]:
    """The best caption of each uint8 or [0, 1] image as a list of words (model in eval mode
    inside, its mode restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str]] = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            for ids in model.generate(x, beam_size, max_length, length_penalty):
                out.append(vocab.decode(ids, join=False))
    finally:
        model.train(was_training)
    return out


def bleu_of(model, dataset, vocab, count: int, beam_size: int, max_length: int,
            length_penalty: float) -> tuple[dict[str, float], list[list[str]]]:
    """Corpus BLEU-1..4 of the model's captions for the first ``count`` images of ``dataset``
    against all their references; also the captions."""
    from rlgen.vision.captioning.bleu import bleu_scores

    images, captions = dataset.images[:count], dataset.captions[:count]
    hypotheses = caption_images(model, images, vocab, beam_size, max_length, length_penalty)
    return bleu_scores(references_of(captions, vocab), hypotheses), hypotheses


def train(config: CaptioningConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train NIC; returns BLEU-1..4 on the test split (``test/bleu1`` ..) with the run
    directory and the last checkpoint."""
    from rlgen.data import load_dataset
    from rlgen.data.batches import TensorBatches
    from rlgen.runtime import Precision
    from rlgen.vision.captioning.model import build_caption_model, caption_loss
    from rlgen.vision.captioning.vocab import Vocabulary
    from rlgen.vision.classification import pixel_statistics

    with TrainingRun("captioning", config, progress=progress) as run:
        config = run.config  # with --resume: the saved config and the flags given now
        _check_caption_dataset(config.dataset)
        kwargs = dict(root=config.data_root, download=config.download,
                      image_size=config.image_size, **_split_options(config.karpathy_split))
        train_set = load_dataset(config.dataset, train=True, **kwargs)
        test_set = load_dataset(config.dataset, train=False, **kwargs)
        if not hasattr(train_set, "captions"):
            raise InputError(f"--dataset {config.dataset} has no captions (a dataset for "
                             f"captioning needs .captions); use {', '.join(CAPTION_DATASETS)}")
        vocab = Vocabulary.build(train_set.captions, min_count=config.min_count)
        image_index, texts = train_set.caption_pairs()
        tokens, lengths = vocab.encode_batch(texts, max_length=config.max_length)
        normalize = "imagenet" if config.encoder_weights else \
            tuple([m] * train_set.channels for m in pixel_statistics(train_set.images))
        model = build_caption_model(
            config.encoder, vocab, config.embed_dim, config.hidden_dim, config.rnn,
            config.num_layers, config.dropout, weights=config.encoder_weights,
            freeze=_freeze_spec(config), in_channels=train_set.channels,
            normalize=normalize, image_norm=config.image_norm).to(run.device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                     lr=config.learning_rate)
        precision = Precision(config.precision, run.device)
        images = train_set.images.to(run.device)
        tokens, lengths, image_index = (t.to(run.device) for t in (tokens, lengths, image_index))
        # Batches of (image, caption) pairs, drawn by their index in the pair list.
        data = TensorBatches(torch.arange(len(texts)), None, config.batch_size,
                             **run.shard_args())

        run.start(total_steps(config, data.steps_per_epoch),
                  {"model": model, "optimizer": optimizer, "precision": precision},
                  meta={"vocab": vocab.state_dict(), "model_config": model.config,
                        "image_size": list(train_set.image_size)},
                  items_per_step=data.batch_size, items_name="captions")
        net = run.prepare(model, channels_last=False)
        step = run.start_step
        for step, (pairs, _) in run.steps(data):
            x = images[image_index[pairs]].float().div_(255.0)
            width = int(lengths[pairs].max())
            caption, length = tokens[pairs, :width], lengths[pairs]
            with precision.autocast():
                logits = net(x, caption, length)
            loss = caption_loss(logits.float(), caption, length)
            optimizer.zero_grad(set_to_none=True)
            precision.step(loss, optimizer)

            if run.due(step, config.log_every):
                run.log(step, {"train/loss": loss, "train/perplexity": loss.exp(),
                               "train/skipped_steps": precision.skipped_steps},
                        show=("train/loss",))
            if run.due(step, config.sample_every) and run.logger is not None:
                _log_samples(run, model, test_set, vocab, config, step)

        metrics: dict[str, float] = {}
        if config.eval_images:
            scores, _ = bleu_of(model, test_set, vocab, config.eval_images, config.beam_size,
                                config.max_length, config.length_penalty)
            metrics = {f"test/{k}": v for k, v in scores.items()}
            run.log(step, metrics)
        return run.finish(step, metrics)


def _log_samples(run: TrainingRun, model, dataset, vocab, config: CaptioningConfig,
                 step: int) -> None:
    """Eight test images with the generated caption and the first true one under each."""
    from rlgen.vision.pictures import captioned_grid

    images = dataset.images[:8]
    generated = caption_images(model, images, vocab, 1, config.max_length)
    captions = [f"{_wrap(' '.join(g))}\ntrue: {_wrap(truth[0])}"
                for g, truth in zip(generated, dataset.captions[:8])]
    run.logger.image("samples/captions", captioned_grid(images.float() / 255, captions, ncol=4,
                                                        min_side=128), step)


def _wrap(text: str, width: int = 24) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:3])


# -- loading, evaluation, captioning your images -----------------------------------------------
def load_captioner(path: str | Path, device: str | torch.device = "cpu"):
    """``(model in eval mode, vocabulary, checkpoint)`` of a ``rlgen train captioning`` run."""
    from rlgen.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
    from rlgen.vision.captioning.model import build_caption_model
    from rlgen.vision.captioning.vocab import Vocabulary

    path = find_checkpoint(path)
    state = load_checkpoint(path)
    if state.get("task") != "captioning":
        raise CheckpointError(f"{path} is not a captioning checkpoint (it holds a "
                              f"{state.get('task')!r} run)")
    vocab = Vocabulary.from_state(state["meta"]["vocab"])
    settings = dict(state["meta"]["model_config"])
    normalize = settings.get("normalize")
    if isinstance(normalize, list):
        normalize = tuple(normalize)
    model = build_caption_model(
        settings["encoder"], vocab, settings["embed_dim"], settings["hidden_dim"],
        settings["rnn"], settings["num_layers"], settings["dropout"],
        in_channels=settings["in_channels"], normalize=normalize,
        image_norm=settings.get("image_norm", False), **settings.get("backbone_kwargs", {}))
    model.load_state_dict(state["state"]["model"])
    return model.to(device).eval(), vocab, {**state, "path": str(path)}


@dataclass
class CaptioningEvalConfig:
    """Corpus BLEU-1..4 of a caption model's beam-search captions on a split."""

    checkpoint: str = ""
    """checkpoint file or run directory"""
    beam_size: int = 3
    """beam width (1: greedy)"""
    length_penalty: float = 0.0
    """rank captions by log_prob / length ** length_penalty"""
    max_length: int | None = None
    """longest caption (None: the training setting)"""
    num_images: int | None = None
    """images to caption (None: the whole split)"""
    split: Literal["test", "train"] = "test"
    """which split"""
    dataset: str | None = None
    """dataset (None: the checkpoint's)"""
    data_root: str | None = None
    """dataset directory (None: the checkpoint's)"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(self.beam_size >= 1, f"--beam-size must be >= 1, got {self.beam_size}")
        check(self.max_length is None or self.max_length >= 1,
              f"--max-length must be >= 1, got {self.max_length}")
        check(self.length_penalty >= 0,
              f"--length-penalty must be >= 0, got {self.length_penalty}")
        if self.dataset is not None:
            self.dataset = dataset_name(self.dataset)
        check(self.num_images is None or self.num_images >= 1,
              f"--num-images must be >= 1, got {self.num_images}")


def evaluate(config: CaptioningEvalConfig) -> dict[str, Any]:
    """``rlgen eval captioning``: prints BLEU-1..4 as one JSON line and returns them."""
    from rlgen.data import load_dataset
    from rlgen.runtime import resolve_device

    model, vocab, state = load_captioner(config.checkpoint, resolve_device(config.device))
    trained = state["config"]
    name = config.dataset or trained["dataset"]
    split = _split_options(trained.get("karpathy_split")) if name == trained["dataset"] else {}
    dataset = load_dataset(name, train=config.split == "train",
                           root=config.data_root or trained.get("data_root", "data"),
                           image_size=trained.get("image_size"), **split)
    count = config.num_images or len(dataset)
    scores, hypotheses = bleu_of(model, dataset, vocab, count, config.beam_size,
                                 config.max_length or trained.get("max_length", 20),
                                 config.length_penalty)
    result = {**scores, "images": min(count, len(dataset)), "beam_size": config.beam_size,
              "split": config.split, "checkpoint": state["path"],
              "example": " ".join(hypotheses[0]) if hypotheses else ""}
    print(json.dumps(result))
    return result


@dataclass
class CaptionConfig:
    """Caption your images with a trained model: the best captions and their scores."""

    checkpoint: str = ""
    """checkpoint file or run directory of `rlgen train captioning`"""
    image: tuple[str, ...] = ()
    """image files"""
    beam_size: int = 3
    """beam width (1: greedy)"""
    top: int = 3
    """captions printed per image (at most --beam-size)"""
    length_penalty: float = 0.0
    """rank captions by log_prob / length ** length_penalty"""
    max_length: int = 20
    """longest caption in words"""
    device: str = "auto"
    """cpu, cuda, mps or auto"""

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "--checkpoint is required (a checkpoint file or run dir)")
        check(bool(self.image), "--image is required (one or more image files)")
        check(self.beam_size >= 1 and self.top >= 1, "--beam-size and --top must be >= 1")
        check(self.max_length >= 1, f"--max-length must be >= 1, got {self.max_length}")
        check(self.length_penalty >= 0,
              f"--length-penalty must be >= 0, got {self.length_penalty}")


def caption(config: CaptionConfig) -> dict[str, Any]:
    """``rlgen caption``: per image, its best captions with log-probabilities."""
    from rlgen.data.folder import load_image
    from rlgen.runtime import resolve_device

    model, vocab, state = load_captioner(config.checkpoint, resolve_device(config.device))
    settings = state["meta"]["model_config"]
    size = _trained_image_size(state)
    mode = "L" if settings["in_channels"] == 1 else "RGB"
    device = next(model.parameters()).device
    results = {}
    for path in config.image:
        image = torch.as_tensor(load_image(path, mode=mode, size=size).copy())
        found = model.beam_search(image[None].to(device).float().div_(255.0), config.beam_size,
                                  config.max_length, config.length_penalty,
                                  num_return=min(config.top, config.beam_size))[0]
        ranked = [(vocab.decode(ids), float(log_prob)) for ids, log_prob in found]
        results[path] = ranked
        print(path)
        for text, log_prob in ranked:
            print(f"  {log_prob:8.3f}  {text}")
    return {"captions": results, "checkpoint": state["path"]}


def _trained_image_size(state: dict) -> tuple[int, int]:
    """(H, W) of the training images (checkpoints before it was saved: from the config)."""
    if "image_size" in state["meta"]:
        return tuple(state["meta"]["image_size"])
    trained = state["config"]
    if trained.get("image_size"):
        return (trained["image_size"],) * 2
    from rlgen.data import load_dataset

    return tuple(load_dataset(trained["dataset"], train=False,
                              root=trained.get("data_root", "data")).image_size)


@TRAINERS.register("captioning", description="Image captioning: NIC (CNN + LSTM / GRU), beam "
                                              "search, BLEU")
def captioning_trainer():
    from rlgen.cli_spec import TrainerSpec

    return TrainerSpec(config=CaptioningConfig, train=train,
                       evaluate=(CaptioningEvalConfig, evaluate))


@TOOLS.register("caption", description="Caption images with a trained model (beam search)")
def caption_tool():
    from rlgen.cli_spec import ToolSpec

    return ToolSpec(config=CaptionConfig, run=caption)
