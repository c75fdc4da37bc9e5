"""Captioning data: the COCO / Karpathy / Flickr8k readers on small files, and the generated
caption-shapes scenes."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rlgen.data import (
    CaptionDataset,
    DataFormatError,
    DatasetNotFoundError,
    collate_captions,
    load_dataset,
    make_caption_shapes,
)
from rlgen.data.captions import COLOURS, RELATIONS, SHAPES
from rlgen.errors import InputError
from rlgen.registry import DATASETS

NAMES = ["coco-captions", "flickr8k", "caption-shapes"]


def write_image(path: Path, colour: tuple[int, int, int], size=(20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), colour).save(path)


def test_registered_with_the_common_signature():
    for name in NAMES:
        params = inspect.signature(DATASETS.get(name)).parameters
        defaults = {k: params[k].default for k in ("root", "train", "download", "image_size")}
        assert defaults == {"root": "data", "train": True, "download": False,
                            "image_size": None}, name
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), name
    assert all(desc for name, desc in DATASETS.list() if name in NAMES)


# -- MS COCO -----------------------------------------------------------------------------------


def coco_files(root: Path, stem: str = "train2014") -> dict:
    images = [{"id": 42, "file_name": f"COCO_{stem}_000000000042.jpg", "width": 30},
              {"id": 7, "file_name": f"COCO_{stem}_000000000007.jpg", "width": 30},
              {"id": 9, "file_name": f"COCO_{stem}_000000000009.jpg"}]  # no caption: left out
    annotations = [
        {"id": 1, "image_id": 42, "caption": "A man riding a horse. "},
        {"id": 2, "image_id": 7, "caption": "Two dogs\nplaying in snow"},
        {"id": 3, "image_id": 42, "caption": "a person on a brown horse"},
        {"id": 4, "image_id": 7, "caption": "dogs in the snow"},
        {"id": 5, "image_id": 42, "caption": "horse and rider"},
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"info": {}, "images": images, "annotations": annotations}
    (root / "annotations" / f"captions_{stem}.json").write_text(json.dumps(data))
    for entry, colour in zip(images, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        write_image(root / stem / entry["file_name"], colour)
    return data


def test_coco_reader_groups_captions_per_image(tmp_path):
    coco_files(tmp_path)
    coco_files(tmp_path, "val2014")
    ds = load_dataset("coco-captions", root=tmp_path, image_size=8)
    assert ds.images.shape == (2, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.ids == ["COCO_train2014_000000000007.jpg", "COCO_train2014_000000000042.jpg"]
    assert ds.captions == [["Two dogs playing in snow", "dogs in the snow"],
                           ["A man riding a horse.", "a person on a brown horse",
                            "horse and rider"]]
    assert ds.images[0, 1].float().mean() > 250 and ds.images[1, 0].float().mean() > 250
    assert load_dataset("coco-captions", root=tmp_path, train=False, image_size=8).ids[0] \
        == "COCO_val2014_000000000007.jpg"
    # The default size for photos, and root/coco/ found too.
    nested = tmp_path / "nested"
    coco_files(nested / "coco")
    assert load_dataset("coco-captions", root=nested).images.shape == (2, 3, 224, 224)
    assert len(load_dataset("coco-captions", root=nested, image_size=8, limit=1)) == 1


def test_coco_missing_and_malformed_files_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="captions_train2014.json is missing"):
        load_dataset("coco-captions", root=tmp_path)
    data = coco_files(tmp_path)
    (tmp_path / "train2014" / data["images"][0]["file_name"]).unlink()
    with pytest.raises(DatasetNotFoundError) as missing:
        load_dataset("coco-captions", root=tmp_path, image_size=8)
    assert "COCO_train2014_000000000042.jpg is missing" in str(missing.value)
    assert "\n" not in str(missing.value)
    path = tmp_path / "annotations" / "captions_train2014.json"
    path.write_text("{not json")
    with pytest.raises(DataFormatError, match="captions_train2014.json: cannot read"):
        load_dataset("coco-captions", root=tmp_path, image_size=8)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 2, "caption": "x"}]}))
    with pytest.raises(DataFormatError, match="image_id 2, which is not in 'images'"):
        load_dataset("coco-captions", root=tmp_path, image_size=8)
    with pytest.raises(InputError, match="not downloaded automatically"):
        load_dataset("coco-captions", root=tmp_path, download=True)


def test_karpathy_split_file(tmp_path):
    entries = []
    for i, split in enumerate(["train", "val", "test", "restval", "train"]):
        folder = "val2014" if split != "train" else "train2014"
        name = f"COCO_{folder}_{i:012d}.jpg"
        write_image(tmp_path / folder / name, (10 * i, 0, 0))
        sentences = [{"raw": f"Caption {j} of image {i}.", "tokens": ["x"]} for j in range(2)]
        if i == 4:
            sentences = [{"tokens": ["only", "tokens"]}]  # no "raw": the tokens joined
        entries.append({"filepath": folder, "filename": name, "imgid": i, "split": split,
                        "sentences": sentences, "cocoid": 100 + i})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries,
                                                            "dataset": "coco"}))
    train = load_dataset("coco-captions", root=tmp_path, karpathy=True, image_size=4)
    assert train.ids == ["100", "103", "104"]  # train + restval, in file order
    assert train.captions[0] == ["Caption 0 of image 0.", "Caption 1 of image 0."]
    assert train.captions[2] == ["only tokens"]
    assert train.images[1, 0, 0, 0] == 30
    test = load_dataset("coco-captions", root=tmp_path, train=False,
                        karpathy=tmp_path / "dataset_coco.json", image_size=4)
    assert test.ids == ["102"]
    val = load_dataset("coco-captions", root=tmp_path, karpathy=True, split="val",
                       image_size=4)
    assert val.ids == ["101"]
    with pytest.raises(InputError, match="Karpathy split"):
        load_dataset("coco-captions", root=tmp_path, karpathy=True, split="dev")


# -- Flickr8k ----------------------------------------------------------------------------------


def flickr_files(root: Path) -> None:
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    names = ["1000_a.jpg", "2000_b.jpg", "3000_c.jpg"]
    lines = []
    for i, name in enumerate(names):
        for j in (1, 0, 2):  # out of order: read back by their number
            lines.append(f"{name}#{j}\t{name[:4]} caption {j} .")
        write_image(root / "Flicker8k_Dataset" / name, (0, 0, 100 * i))
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("2000_b.jpg\n1000_a.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("3000_c.jpg\n")
    (text / "Flickr_8k.testImages.txt").write_text("3000_c.jpg\n")


def test_flickr8k_reader(tmp_path):
    flickr_files(tmp_path)
    train = load_dataset("flickr8k", root=tmp_path, image_size=(6, 10))
    assert train.images.shape == (2, 3, 6, 10)
    assert train.ids == ["2000_b.jpg", "1000_a.jpg"]  # the split list's order
    assert train.captions[0] == ["2000 caption 0 .", "2000 caption 1 .", "2000 caption 2 ."]
    assert train.images[0, 2].float().mean() == 100
    dev = load_dataset("flickr8k", root=tmp_path, split="val", image_size=4)
    assert dev.ids == ["3000_c.jpg"] and dev.split == "dev"
    assert load_dataset("flickr8k", root=tmp_path, train=False, image_size=4).ids == \
        ["3000_c.jpg"]


def test_flickr8k_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Flickr8k.token.txt is missing"):
        load_dataset("flickr8k", root=tmp_path)
    flickr_files(tmp_path)
    (tmp_path / "Flicker8k_Dataset" / "1000_a.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="1000_a.jpg is missing"):
        load_dataset("flickr8k", root=tmp_path, image_size=4)
    (tmp_path / "Flicker8k_Dataset" / "1000_a.jpg").write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match="1000_a.jpg: cannot read this image"):
        load_dataset("flickr8k", root=tmp_path, image_size=4)
    tokens = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    tokens.write_text(tokens.read_text() + "no tab on this line\n")
    with pytest.raises(DataFormatError, match=r"Flickr8k.token.txt:10: expected"):
        load_dataset("flickr8k", root=tmp_path, image_size=4)


# -- the dataset contract ----------------------------------------------------------------------


def test_caption_dataset_items_batches_and_pairs():
    ds = load_dataset("caption-shapes", num_images=6, image_size=16)
    image, captions = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
    assert image.min() >= 0 and image.max() <= 1 and captions == ds.captions[0]
    x, caps = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_captions)))
    assert x.shape == (4, 3, 16, 16) and caps == ds.captions[:4]
    index, texts = ds.caption_pairs()
    assert index.tolist() == [i for i in range(6) for _ in range(5)] and len(texts) == 30
    assert texts[5] == ds.captions[1][0] and ds.num_captions == 30
    assert not hasattr(ds, "labels")  # a one-line error, also an AttributeError
    with pytest.raises(ValueError, match="non-empty caption strings"):
        CaptionDataset(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [[]])


# -- caption-shapes ----------------------------------------------------------------------------


def test_caption_shapes_is_deterministic_and_splits_differ():
    a = load_dataset("caption-shapes", num_images=20, seed=3)
    b = load_dataset("caption-shapes", num_images=20, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    test = load_dataset("caption-shapes", num_images=20, seed=3, train=False)
    assert not torch.equal(a.images, test.images) and a.captions != test.captions
    assert a.images.shape == (20, 3, 64, 64) and all(len(c) == 5 for c in a.captions)
    assert len(load_dataset("caption-shapes", train=False, image_size=16)) == 500
    assert len({c[0] for c in a.captions}) > 15  # varied scenes


def parse(caption: str) -> tuple[str, str, str, str, str]:
    """'a red circle left of a blue square' -> (red, circle, left of, blue, square)."""
    words = caption.split()
    assert words[0] == "a" and words[-3] == "a", caption
    return words[1], words[2], " ".join(words[3:-3]), words[-2], words[-1]


def test_caption_shapes_captions_describe_the_drawn_scene():
    images, captions, objects = make_caption_shapes(300, 64, seed=1, return_objects=True)
    names = list(COLOURS)
    for i in range(300):
        c0, s0, relation, c1, s1 = parse(captions[i][0])
        # The words are the generator's parameters...
        assert (c0, c1) == (names[objects["colour"][i, 0]], names[objects["colour"][i, 1]])
        assert (s0, s1) == (SHAPES[objects["shape"][i, 0]], SHAPES[objects["shape"][i, 1]])
        assert relation == RELATIONS[objects["relation"][i]]
        # ...and the pixels show them: each colour's blob has the named shape and position.
        centres = []
        for colour, shape in ((c0, s0), (c1, s1)):
            mask = (images[i] == np.array(COLOURS[colour])[:, None, None]).all(0)
            ys, xs = np.nonzero(mask)
            assert len(ys) > 20, (i, colour)
            r, g, b = images[i][:, ys[0], xs[0]].astype(int)  # the colour word fits the pixels
            assert {"red": r > 2 * max(g, b), "green": g > 2 * max(r, b),
                    "blue": b > 2 * max(r, g), "yellow": min(r, g) > 3 * b,
                    "white": min(r, g, b) > 200}[colour], (i, colour, (r, g, b))
            fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
            expected = {"square": (0.95, 1.01), "circle": (0.65, 0.9), "triangle": (0.3, 0.65)}
            low, high = expected[shape]
            assert low <= fill <= high, (i, captions[i][0], fill)
            centres.append((ys.mean(), xs.mean()))
        (y0, x0), (y1, x1) = centres
        holds = {"left of": x0 < x1, "right of": x0 > x1, "above": y0 < y1, "below": y0 > y1}
        assert holds[relation], (i, captions[i][0])
        # One relation only: the other axis's offset is smaller than this one's.
        along, across = (abs(x1 - x0), abs(y1 - y0)) if "of" in relation else \
            (abs(y1 - y0), abs(x1 - x0))
        assert along > across + 5, (i, captions[i][0])
        # The other phrasings say the same thing.
        a, b = f"a {c0} {s0}", f"a {c1} {s1}"
        inverse = RELATIONS[RELATIONS.index(relation) ^ 1]
        assert captions[i][1] == f"{b} {inverse} {a}"
        assert captions[i][2].startswith(f"{a} is ") and captions[i][2].endswith(b)
        assert captions[i][3].startswith(f"there is {b} ") and captions[i][3].endswith(a)
    assert set(objects["relation"].tolist()) == {0, 1, 2, 3}
    assert set(objects["shape"].ravel().tolist()) == {0, 1, 2}
