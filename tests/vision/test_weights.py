"""Loading torchvision-format state dicts: key names and shapes written out by hand from
torchvision's layout (so these tests do not compare rlgen with itself), round trips through
files, the usual checkpoint wrappers, and clear errors for everything that does not fit."""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from rlgen.registry import MODELS
from rlgen.vision.backbones import create_backbone, create_model
from rlgen.vision.backbones import weights as weights_module
from rlgen.vision.backbones.resnet import resnet18
from rlgen.vision.backbones.weights import (
    TORCHVISION_URL,
    TORCHVISION_WEIGHTS,
    PublishedWeights,
    WeightsError,
    WeightsFileNotFoundError,
    checkpoint_num_classes,
    compare_state_dicts,
    fetch_published,
    load_weights,
    weights_cache_dir,
)


def _bn(shapes: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def torchvision_resnet18_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet18().state_dict() key -> shape, written out from its layout."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            cin = inplanes if j == 0 else planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(shapes, f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(shapes, f"{p}.bn2", planes)
            if j == 0 and planes != inplanes:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def torchvision_vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.vgg16().state_dict(): convs at their index in ``features``."""
    widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2
    shapes, index, cin = {}, 0, 3
    for w in widths:
        if w != "M":
            shapes[f"features.{index}.weight"] = (w, cin, 3, 3)
            shapes[f"features.{index}.bias"] = (w,)
            cin, index = w, index + 2  # conv, relu
        else:
            index += 1
    for i, (n_out, n_in) in zip((0, 3, 6), [(4096, 25088), (4096, 4096), (1000, 4096)]):
        shapes[f"classifier.{i}.weight"] = (n_out, n_in)
        shapes[f"classifier.{i}.bias"] = (n_out,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
        else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def tv_state():
    return random_state(torchvision_resnet18_shapes())


def test_hand_written_layouts_match(tv_state):
    assert len(tv_state) == 122
    assert tv_state["layer4.1.bn2.running_var"].shape == (512,)
    assert tv_state["fc.weight"].shape == (1000, 512)
    report = compare_state_dicts(create_model("resnet18"), tv_state)
    assert report.ok, report
    vgg_shapes = torchvision_vgg16_shapes()
    assert vgg_shapes["features.28.weight"] == (512, 512, 3, 3)
    with torch.device("meta"):
        vgg = create_model("vgg16")
    assert {k: tuple(v.shape) for k, v in vgg.state_dict().items()} == vgg_shapes


def test_round_trip_through_a_file(tmp_path, tv_state):
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv_state, path)
    for model in (create_model("resnet18", weights=path), resnet18(weights=str(path))):
        loaded = model.state_dict()
        assert list(loaded) == list(tv_state)
        for k, v in tv_state.items():
            assert torch.equal(loaded[k], v), k
    # And back: a file saved from rlgen has the same keys and values.
    again = tmp_path / "again.pth"
    torch.save(model.state_dict(), again)
    assert torch.equal(torch.load(again, weights_only=True)["layer3.0.conv1.weight"],
                       tv_state["layer3.0.conv1.weight"])  # fmt: skip


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_checkpoint_wrappers(tmp_path, tv_state, wrap):
    if wrap == "module.":  # DistributedDataParallel's prefix
        obj = {f"module.{k}": v for k, v in tv_state.items()}
    else:
        obj = {wrap: tv_state, "epoch": 90, "optimizer": {"lr": torch.tensor(0.1)}}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = create_model("resnet18")
    assert load_weights(model, path).ok
    assert torch.equal(model.fc.weight, tv_state["fc.weight"])


def test_renamed_key_is_listed(tmp_path, tv_state):
    state = dict(tv_state)
    state["layer4.1.bn2.running_variance"] = state.pop("layer4.1.bn2.running_var")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "'resnet18'" in msg
    assert "1 missing keys" in msg and "layer4.1.bn2.running_var\n" in msg
    assert "1 unexpected keys" in msg and "layer4.1.bn2.running_variance" in msg


def test_wrong_shape_is_listed_with_both_shapes(tmp_path, tv_state):
    state = dict(tv_state)
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 512), torch.randn(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_weights(create_model("resnet18"), path)
    msg = str(err.value)
    assert "2 shape mismatches" in msg
    assert "fc.weight: model [1000, 512] vs file [10, 512]" in msg
    assert "fc.bias: model [1000] vs file [10]" in msg
    assert "strict=False" in msg  # the hint for a new head
    # strict=False loads the rest and reports the head.
    model = create_model("resnet18")
    fc_before = model.fc.weight.clone()
    report = load_weights(model, path, strict=False)
    assert [k for k, *_ in report.mismatched] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_classifier_file_into_a_backbone(tv_state):
    backbone = create_backbone("resnet18")
    report = load_weights(backbone, tv_state, strict=False)
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing
    assert torch.equal(backbone.layer4[1].bn2.running_var, tv_state["layer4.1.bn2.running_var"])
    with pytest.raises(WeightsError, match="2 unexpected keys"):
        load_weights(backbone, tv_state)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsFileNotFoundError, match="nope.pth") as err:
        create_model("resnet18", weights=path)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


class Arbitrary:  # a pickled object that weights_only=True must refuse to build
    pass


@pytest.mark.parametrize(
    "content,message",
    [
        ([1, 2, 3], "does not hold a state dict"),
        ({}, "does not hold a state dict"),
        ({"conv1.weight": 3}, "not name -> tensor"),
        ("garbage", "could not be read"),
        (Arbitrary(), "could not be read"),
    ],
)
def test_not_a_state_dict(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content == "garbage":
        path.write_bytes(b"this is not a torch file")
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message) as err:
        load_weights(create_model("resnet18", num_classes=2), path)
    assert str(path) in str(err.value)


def test_googlenet_aux_hint():
    with torch.device("meta"):
        with_aux = create_model("googlenet", aux_logits=True).state_dict()
        plain = create_model("googlenet")
    with pytest.raises(WeightsError, match="aux_logits=True"):
        load_weights(plain, with_aux)


# --- transfer learning: the file's body under a new head -------------------------------------


def save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


def assert_body_from_file(model, state: dict, head: tuple[str, ...]) -> None:
    """Every tensor outside ``head`` equals the file's, bit for bit."""
    loaded = model.state_dict()
    body = [k for k in state if not k.startswith(head)]
    assert body and all(k in loaded for k in body)
    for k in body:
        assert torch.equal(loaded[k], state[k]), k


def test_new_head_when_num_classes_differs(tmp_path, tv_state):
    path = save(tv_state, tmp_path / "imagenet.pth")
    model = create_model("resnet18", weights=path, num_classes=10)
    assert_body_from_file(model, tv_state, head=("fc.",))
    assert model.num_classes == 10 and model.fc.weight.shape == (10, 512)
    # A fresh nn.Linear: uniform in +-1/sqrt(fan_in), nothing like the file's N(0, 1) rows.
    bound = 1 / math.sqrt(512)
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound
    assert model.fc.weight.requires_grad
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Without num_classes the file's head is kept (here 1000 classes, as before).
    same = create_model("resnet18", weights=path)
    assert torch.equal(same.fc.weight, tv_state["fc.weight"])


def test_fine_tuned_checkpoint_keeps_its_head(tmp_path, tv_state):
    state = dict(tv_state, **{"fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)})
    path = save({"format": "rlgen.run/1", "state": {"model": state}}, tmp_path / "run.pt")
    model = create_model("resnet18", weights=path)  # builds the file's 10-class head
    assert model.num_classes == 10 and torch.equal(model.fc.weight, state["fc.weight"])
    back = create_model("resnet18", weights=path, num_classes=1000)
    assert_body_from_file(back, state, head=("fc.",))
    assert back.fc.weight.shape == (1000, 512)


def test_mismatch_outside_the_head_is_still_an_error(tmp_path, tv_state):
    state = dict(tv_state)
    state["layer2.0.conv1.weight"] = torch.randn(128, 64, 1, 1)
    path = save(state, tmp_path / "odd.pth")
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights=path, num_classes=10)
    msg = str(err.value)
    assert path in msg and "1 shape mismatches" in msg
    assert "layer2.0.conv1.weight: model [128, 64, 3, 3] vs file [128, 64, 1, 1]" in msg
    assert "fc." not in msg
    # Another in_channels is a body mismatch too: conv1 is named.
    good = save(tv_state, tmp_path / "good.pth")
    with pytest.raises(WeightsError, match=r"conv1.weight: model \[64, 1, 7, 7\] vs file"):
        create_model("resnet18", weights=good, num_classes=10, in_channels=1)


def test_googlenet_aux_heads_are_replaced_too(tmp_path):
    torch.manual_seed(0)
    state = create_model("googlenet", aux_logits=True).state_dict()
    path = save(state, tmp_path / "googlenet.pth")
    model = create_model("googlenet", aux_logits=True, weights=path, num_classes=5)
    assert_body_from_file(model, state, head=("fc.", "aux1.fc2.", "aux2.fc2."))
    assert [m.out_features for m in (model.fc, model.aux1.fc2, model.aux2.fc2)] == [5, 5, 5]
    assert not torch.equal(model.aux1.fc2.weight, state["aux1.fc2.weight"][:5])


def test_checkpoint_num_classes_reads_the_output_layer():
    meta = {k: torch.empty(s, device="meta") for k, s in torchvision_vgg16_shapes().items()}
    assert checkpoint_num_classes(meta) == 1000  # classifier.6, not classifier.0 (4096)
    meta["classifier.6.weight"] = torch.empty(7, 4096, device="meta")
    assert checkpoint_num_classes(meta) == 7
    assert checkpoint_num_classes({"fc.weight": torch.empty(3, 8)}) == 3
    assert checkpoint_num_classes({"conv1.weight": torch.empty(64, 3, 7, 7)}) is None


# --- published weights: torchvision's files, cached, hash-checked ---------------------------


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A static file server on 127.0.0.1 (loopback only) serving ``server.dir``; ``requests``
    lists the paths asked for."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield SimpleNamespace(dir=root, url=url, requests=requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """rlgen's cache in a temporary folder; the weights land in its ``weights`` subfolder."""
    monkeypatch.setenv("RLGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def publish(monkeypatch, name: str, filename: str, url: str, **kwargs) -> None:
    """Point ``torchvision:<name>`` at ``url`` for this test."""
    table = dict(TORCHVISION_WEIGHTS, **{name: PublishedWeights(filename, url, **kwargs)})
    monkeypatch.setattr(weights_module, "TORCHVISION_WEIGHTS", table)


def hashed_file(folder, stem: str, state: dict) -> str:
    """Save ``state`` as ``<stem>-<first 8 hex digits of its sha256>.pth``, as torchvision
    names its files; returns the file name."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "unnamed.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    filename = f"{stem}-{digest[:8]}.pth"
    tmp.rename(folder / filename)
    return filename


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = {"w": torch.arange(6.0).view(2, 3)}


def test_download_into_the_cache_then_cache_hit(http_server, cache, monkeypatch):
    filename = hashed_file(http_server.dir, "tiny", TINY)
    publish(monkeypatch, "tiny", filename, f"{http_server.url}/{filename}")
    path = fetch_published("torchvision:tiny", quiet=True)
    assert path == cache / filename
    assert sorted(p.name for p in cache.iterdir()) == [filename]  # no temporary file left
    assert torch.equal(torch.load(path, weights_only=True)["w"], TINY["w"])
    assert http_server.requests == [f"/{filename}"]
    # Second time: from the cache, after its hash check, without a request.
    assert fetch_published("torchvision:tiny", quiet=True) == path
    assert weights_module.read_state_dict("torchvision:tiny")["w"].shape == (2, 3)
    assert http_server.requests == [f"/{filename}"]


def test_wrong_hash_is_refused_and_nothing_is_cached(http_server, cache, monkeypatch):
    real = hashed_file(http_server.dir, "tiny", TINY)
    wrong = "tiny-00000000.pth"
    (http_server.dir / real).rename(http_server.dir / wrong)
    publish(monkeypatch, "tiny", wrong, f"{http_server.url}/{wrong}")
    with pytest.raises(WeightsError, match="does not start with 00000000") as err:
        fetch_published("torchvision:tiny", quiet=True)
    assert not isinstance(err.value, FileNotFoundError)
    assert not cache.exists() or list(cache.iterdir()) == []
    # The same file put into the cache by hand is refused too, and left for the user to delete.
    cache.mkdir(parents=True, exist_ok=True)
    (cache / wrong).write_bytes((http_server.dir / wrong).read_bytes())
    with pytest.raises(WeightsError, match="is not the published one.*delete it"):
        create_model("resnet18", weights="torchvision:tiny")
    assert len(http_server.requests) == 1


@pytest.mark.parametrize("where", ["nobody listening", "404"])
def test_offline_says_which_file_to_put_where(http_server, cache, monkeypatch, where):
    filename = "resnet50-0676ba61.pth"
    base = f"http://127.0.0.1:{free_port()}" if where == "nobody listening" else http_server.url
    url = f"{base}/{filename}"
    publish(monkeypatch, "resnet50", filename, url)
    with pytest.raises(WeightsFileNotFoundError) as err:
        create_model("resnet50", weights="torchvision:resnet50", num_classes=10)
    msg = str(err.value)
    assert msg.endswith(f"; put {filename} (from {url}) into {cache}{os.sep}")
    assert msg.startswith("cannot download torchvision:resnet50 (")
    assert "\n" not in msg and isinstance(err.value, FileNotFoundError)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_published_file_from_the_cache_into_a_new_head(tmp_path, cache, monkeypatch, tv_state):
    filename = hashed_file(cache, "resnet18", tv_state)
    publish(monkeypatch, "resnet18", filename, f"http://127.0.0.1:{free_port()}/{filename}")
    model = create_model("resnet18", weights="torchvision:resnet18", num_classes=10)
    assert_body_from_file(model, tv_state, head=("fc.",))
    assert model.fc.weight.shape == (10, 512)


def test_published_googlenet_defaults(cache, monkeypatch):
    # torchvision's file has (untrained) auxiliary heads and expects transform_input=True.
    torch.manual_seed(0)
    state = create_model("googlenet", aux_logits=True).state_dict()
    filename = hashed_file(cache, "googlenet", state)
    publish(monkeypatch, "googlenet", filename, "http://127.0.0.1:9/unused",
            **{k: getattr(TORCHVISION_WEIGHTS["googlenet"], k)
               for k in ("model_kwargs", "optional_prefixes")})  # fmt: skip
    model = create_model("googlenet", weights="torchvision:googlenet", num_classes=3)
    assert model.transform_input and model.aux1 is None and model.fc.out_features == 3
    assert_body_from_file(model, state, head=("fc.", "aux1.", "aux2."))
    kept = create_model("googlenet", weights="torchvision:googlenet", aux_logits=True,
                        transform_input=False)  # fmt: skip
    assert not kept.transform_input and torch.equal(kept.aux2.fc2.weight, state["aux2.fc2.weight"])


def test_unknown_published_name_lists_the_known_ones():
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights="torchvision:foo")
    msg = str(err.value)
    assert "'torchvision:foo'" in msg and "\n" not in msg
    for name in ("alexnet", "googlenet", "resnet50", "vgg16_bn"):
        assert name in msg


def test_published_table_is_well_formed():
    expected = {"alexnet", "googlenet"} | {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    assert set(TORCHVISION_WEIGHTS) == expected and expected <= set(MODELS.names())
    for name, entry in TORCHVISION_WEIGHTS.items():
        assert entry.url == TORCHVISION_URL + entry.filename
        assert entry.filename.startswith(name + "-") and entry.filename.endswith(".pth")
        assert len(entry.hash_prefix) == 8, name
    assert TORCHVISION_WEIGHTS["resnet50"].url == (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    )
    assert TORCHVISION_WEIGHTS["resnet50"].hash_prefix == "0676ba61"


def test_weights_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RLGEN_CACHE_DIR", str(tmp_path / "a"))
    assert weights_cache_dir() == tmp_path / "a" / "weights"
    monkeypatch.delenv("RLGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache_dir() == tmp_path / "xdg" / "rlgen" / "weights"
