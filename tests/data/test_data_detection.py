"""Detection data: the VOC XML and COCO JSON readers on small files written here, the
generated det-shapes, the padded batch format and the on-device flip / zoom of boxes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlgen.data import detection, load_dataset
from rlgen.data.base import ChecksumError, DataFormatError, DatasetNotFoundError
from rlgen.data.detection import (
    DET_SHAPE_CLASSES,
    VOC_DETECTION_CLASSES,
    DetectionAugment,
    DetectionDataset,
    make_det_shapes,
    make_target,
    pad_targets,
    unpad_targets,
)
from rlgen.errors import InputError


def write_voc(root: Path, objects: dict[str, list[tuple]], split: str = "trainval",
              size: tuple[int, int] = (40, 60), year: int = 2007) -> Path:
    """A VOCdevkit folder: per id a JPEG of ``size`` (h, w) and an XML with ``objects``
    ``(name, xmin, ymin, xmax, ymax, difficult)`` in VOC's 1-based pixel indices."""
    folder = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    for image_id, objs in objects.items():
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(folder / "JPEGImages" /
                                                                f"{image_id}.jpg")
        parts = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{int(d)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for n, x1, y1, x2, y2, d in objs)
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{parts}</annotation>")
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    return folder


def test_voc_reader_converts_one_based_boxes_and_scales_them(tmp_path):
    write_voc(tmp_path, {"000005": [("dog", 1, 1, 60, 40, False), ("person", 11, 21, 30, 30,
                                                                     True)],
                         "000007": []})
    data = load_dataset("voc-detection", root=tmp_path, image_size=(20, 30))
    assert data.classes == list(VOC_DETECTION_CLASSES) and data.num_classes == 20
    assert data.images.shape == (2, 3, 20, 30) and data.ids == ["000005", "000007"]
    assert data.original_sizes.tolist() == [[40, 60], [40, 60]]
    first = data.targets[0]
    # 1-based inclusive (1, 1, 60, 40) covers the whole 60x40 image: (0, 0, 60, 40), halved.
    torch.testing.assert_close(first["boxes"], torch.tensor([[0.0, 0, 30, 20],
                                                             [5.0, 10, 15, 15]]))
    assert first["labels"].tolist() == [VOC_DETECTION_CLASSES.index("dog"),
                                         VOC_DETECTION_CLASSES.index("person")]
    assert first["difficult"].tolist() == [False, True]
    assert len(data.targets[1]["labels"]) == 0
    image, target = data[0]
    assert image.dtype == torch.float32 and target["boxes"].shape == (2, 4)
    dropped = load_dataset("voc-detection", root=tmp_path, image_size=20, keep_difficult=False)
    assert dropped.targets[0]["labels"].tolist() == [VOC_DETECTION_CLASSES.index("dog")]


def test_voc_splits_and_errors(tmp_path):
    folder = write_voc(tmp_path, {"a": [("cat", 2, 2, 10, 10, False)]}, split="test")
    assert load_dataset("voc-detection", root=tmp_path, train=False, image_size=16).split \
        == "test"
    with pytest.raises(DatasetNotFoundError, match="trainval"):
        load_dataset("voc-detection", root=tmp_path, train=True)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_dataset("voc-detection", root=tmp_path / "nowhere")
    with pytest.raises(InputError, match="VOC 2012 has no official archive with the 'test'"):
        load_dataset("voc-detection", root=tmp_path / "nowhere", year=2012, split="test",
                     download=True)
    xml = folder / "Annotations" / "a.xml"
    good = xml.read_text()
    for text, message in [
        ("<annotation><size>", "cannot parse"),
        (good.replace("cat", "unicorn"), "unknown class 'unicorn'"),
        (good.replace("<xmax>10</xmax>", "<xmax>99</xmax>"), "outside the 60x40 image"),
        (good.replace("<xmin>2</xmin>", "<xmin>two</xmin>"), "not a number"),
        (good.replace("<ymax>10</ymax>", ""), "no <ymax>"),
    ]:
        xml.write_text(text)
        with pytest.raises(DataFormatError, match=message) as info:
            load_dataset("voc-detection", root=tmp_path, train=False)
        assert str(xml) in str(info.value)
    xml.write_text(good)
    (folder / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match="a.jpg: cannot read"):
        load_dataset("voc-detection", root=tmp_path, train=False)
    (folder / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="a.jpg is missing"):
        load_dataset("voc-detection", root=tmp_path, train=False)


def write_coco(root: Path, annotations: list[dict], split: str = "val2017") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    for name, (h, w) in (("a.jpg", (30, 40)), ("b.jpg", (20, 20))):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / split / name)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "height": 30, "width": 40},
                   {"id": 3, "file_name": "b.jpg", "height": 20, "width": 20}],
        "annotations": annotations,
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"},
                       {"id": 90, "name": "toothbrush"}]}))
    return path


def test_coco_reader_maps_categories_and_converts_xywh(tmp_path):
    write_coco(tmp_path, [
        {"image_id": 7, "bbox": [4, 6, 10, 12], "category_id": 18, "iscrowd": 0},
        {"image_id": 7, "bbox": [0, 0, 40, 30], "category_id": 90, "iscrowd": 1},
        {"image_id": 7, "bbox": [5, 5, 0, 3], "category_id": 1, "iscrowd": 0},  # degenerate
        {"image_id": 3, "bbox": [2, 2, 4, 4], "category_id": 1}])
    data = load_dataset("coco-detection", root=tmp_path, train=False, image_size=(15, 20))
    assert data.classes == ["person", "dog", "toothbrush"] and data.category_ids == [1, 18, 90]
    assert data.image_ids == [7, 3]
    a, b = data.targets
    torch.testing.assert_close(a["boxes"], torch.tensor([[2.0, 3, 7, 9], [0, 0, 20, 15]]))
    assert a["labels"].tolist() == [1, 2] and a["iscrowd"].tolist() == [False, True]
    torch.testing.assert_close(b["boxes"], torch.tensor([[2.0, 1.5, 6, 4.5]]))
    assert b["labels"].tolist() == [0]


def test_coco_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="instances_val2017.json is missing"):
        load_dataset("coco-detection", root=tmp_path, train=False)
    path = write_coco(tmp_path, [{"image_id": 99, "bbox": [0, 0, 1, 1], "category_id": 1}])
    with pytest.raises(DataFormatError, match="unknown image or category"):
        load_dataset("coco-detection", root=tmp_path, train=False)
    write_coco(tmp_path, [{"image_id": 7, "bbox": [0, 0, 1], "category_id": 1}])
    with pytest.raises(DataFormatError, match="not four numbers"):
        load_dataset("coco-detection", root=tmp_path, train=False)
    path.write_text('{"images": [')
    with pytest.raises(DataFormatError, match="cannot read this JSON"):
        load_dataset("coco-detection", root=tmp_path, train=False)
    path.write_text('{"images": []}')
    with pytest.raises(DataFormatError, match="not a COCO instances file"):
        load_dataset("coco-detection", root=tmp_path, train=False)
    with pytest.raises(InputError, match="not downloaded automatically"):
        load_dataset("coco-detection", root=tmp_path, download=True)


def test_det_shapes_boxes_are_the_visible_extent_of_each_shape():
    from rlgen.data.segmentation import make_seg_shapes

    images, targets = make_det_shapes(40, 48, seed=3, max_objects=4)
    seg_images, masks = make_seg_shapes(40, 48, seed=3, max_objects=4)
    np.testing.assert_array_equal(images, seg_images)  # the same scenes as seg-shapes
    for mask, target in zip(masks, targets):
        assert len(target["labels"]) >= 1
        for box, label, hard in zip(target["boxes"], target["labels"], target["difficult"]):
            x1, y1, x2, y2 = box.long().tolist()
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
            inside = mask[y1:y2, x1:x2] == label + 1
            if not hard:  # visible pixels of its class touch every side of its box
                assert inside[0].any() and inside[-1].any()
                assert inside[:, 0].any() and inside[:, -1].any()
    counts = [len(t["labels"]) for t in targets]
    assert max(counts) > 1 and any(t["difficult"].any() for t in targets)
    again, same = make_det_shapes(40, 48, seed=3)
    assert all(torch.equal(s["boxes"], t["boxes"]) for s, t in zip(same, targets))
    train = load_dataset("det-shapes", num_images=8)
    test = load_dataset("det-shapes", train=False, num_images=8)
    assert train.classes == list(DET_SHAPE_CLASSES) and train.image_size == (64, 64)
    assert not torch.equal(train.images, test.images)
    with pytest.raises(AttributeError, match="detection dataset"):
        train.labels  # noqa: B018


def test_padding_round_trip_and_dataset_checks():
    targets = [make_target([[1, 2, 3, 4]], [2], [True]), make_target(np.zeros((0, 4)), []),
               make_target([[0, 0, 5, 5], [2, 2, 8, 9]], [0, 1])]
    padded = pad_targets(targets)
    assert padded["boxes"].shape == (3, 2, 4) and padded["labels"][1].tolist() == [-1, -1]
    back = unpad_targets(padded)
    for a, b in zip(targets, back):
        for key in a:
            assert torch.equal(a[key], b[key])
    with pytest.raises(ValueError, match="expected 0..2"):
        DetectionDataset(torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
                         [make_target([[0, 0, 1, 1]], [3])], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        DetectionDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), targets[:1], classes="ab")


def test_augment_flips_boxes_with_the_image_and_repeats_with_the_generator():
    x = torch.zeros(6, 1, 8, 10)
    x[:, :, 2:4, 1:3] = 1.0  # a bright block at columns 1-2, rows 2-3
    y = pad_targets([make_target([[1, 2, 3, 4]], [0])] * 6)
    out, boxes = DetectionAugment(flip=True)(x, y, torch.Generator().manual_seed(1))
    flipped = out[:, 0, 2, 7:9].bool().all(1)
    assert flipped.any() and not flipped.all()
    for i in range(6):
        expected = [7.0, 2, 9, 4] if flipped[i] else [1.0, 2, 3, 4]
        assert boxes["boxes"][i, 0].tolist() == expected
    again, _ = DetectionAugment(flip=True)(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_augment_zoom_maps_boxes_onto_the_resampled_pixels():
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, 8:16, 12:20] = 1.0
    y = pad_targets([make_target([[12, 8, 20, 16]], [0])] * 16)
    out, boxes = DetectionAugment(flip=False, scale=(1.2, 1.5))(
        x, y, torch.Generator().manual_seed(0))
    for i in range(16):
        if boxes["labels"][i, 0] < 0:
            continue
        x1, y1, x2, y2 = boxes["boxes"][i, 0].tolist()
        bright = out[i, 0] > 0.5
        rows, cols = bright.any(1).nonzero().squeeze(1), bright.any(0).nonzero().squeeze(1)
        assert abs(rows.min() - y1) <= 1 and abs(rows.max() + 1 - y2) <= 1
        assert abs(cols.min() - x1) <= 1 and abs(cols.max() + 1 - x2) <= 1
    with pytest.raises(ValueError, match="0 < low <= high"):
        DetectionAugment(scale=(1.5, 1.2))


def voc_tar(tmp_path: Path, truncate: bool = False) -> bytes:
    """An archive in the official layout (VOCdevkit/VOC2007/...) with a per-class list and a
    member whose name tries to leave the folder, both to be skipped."""
    folder = write_voc(tmp_path / "src", {"000001": [("cat", 2, 2, 10, 10, False)],
                                          "000002": [("bus", 5, 5, 30, 20, True)]})
    (folder / "ImageSets" / "Main" / "cat_trainval.txt").write_text("000001  1\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder.parent, arcname="VOCdevkit")
        evil = b"gotcha"
        info = tarfile.TarInfo("../VOC2007/Annotations/../../gotcha")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    data = buffer.getvalue()
    return data[: len(data) // 2] if truncate else data


def test_voc_archive_is_checked_extracted_and_downloaded(tmp_path, http_server, monkeypatch):
    name = "VOCtrainval_06-Nov-2007.tar"
    data = voc_tar(tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    (local / name).write_bytes(data)
    with pytest.raises(ChecksumError, match=name):
        load_dataset("voc-detection", root=local)  # not the official archive
    ds = load_dataset("voc-detection", root=local, verify=False, image_size=20)
    assert ds.ids == ["000001", "000002"] and ds.targets[1]["difficult"].tolist() == [True]
    main = local / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["trainval.txt"]  # no per-class lists
    assert not list(tmp_path.glob("**/gotcha"))

    (http_server.dir / name).write_bytes(data)
    monkeypatch.setitem(detection.VOC_ARCHIVES, (2007, "trainval"),
                        (name, "md5:" + hashlib.md5(data).hexdigest()))
    fresh = tmp_path / "fresh"
    ds = load_dataset("voc-detection", root=fresh, download=True, mirrors=[http_server.url],
                      image_size=20)
    assert len(ds) == 2 and (fresh / name).is_file()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / name).write_bytes(voc_tar(tmp_path / "b", truncate=True))
    with pytest.raises(DataFormatError, match=f"{name}: ") as info:
        load_dataset("voc-detection", root=broken, verify=False)
    assert "\n" not in str(info.value)
    assert not (broken / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
                ).exists()  # the lists come last: nothing claims to be complete
