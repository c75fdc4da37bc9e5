import sys
import textwrap
import warnings

import pytest

from rlgen import registry as registry_module
from rlgen.registry import Registry, UnknownNameError


def make_registry() -> Registry:
    reg = Registry("widgets")

    @reg.register("alpha")
    def alpha(size: int = 1):
        """An alpha widget.

        More text that is not the description."""
        return ("alpha", size)

    @reg.register("alphabet", description="explicit description")
    def alphabet():
        return "alphabet"

    return reg


def test_register_create_and_list():
    reg = make_registry()
    assert reg.create("alpha", size=3) == ("alpha", 3)
    assert reg.list() == [("alpha", "An alpha widget."), ("alphabet", "explicit description")]
    assert "alpha" in reg and "beta" not in reg
    assert len(reg) == 2


def test_duplicate_name_raises():
    reg = make_registry()
    with pytest.raises(ValueError, match="'alpha' is already registered"):
        reg.register("alpha")(lambda: None)


def test_unknown_name_lists_closest():
    reg = make_registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert "unknown widget 'alpah'" in message
    assert "closest: alpha" in message
    assert isinstance(info.value, KeyError)


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UnknownNameError, match="known: alpha, alphabet"):
        make_registry().get("zzzzzzzz")


def test_builtin_backbones_are_registered():
    from rlgen.registry import BACKBONES, MODELS

    assert "resnet18" in BACKBONES
    assert "resnet50" in MODELS


def _install_plugin(tmp_path, monkeypatch, name: str, module_source: str, target: str):
    """A real installed distribution: a module plus a .dist-info with entry_points.txt."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[rlgen.plugins]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)


def test_entry_point_plugin_registers_a_backbone(tmp_path, monkeypatch):
    source = """
        import torch
        from rlgen.vision.backbones import Backbone, FeatureInfo, register_backbone

        class Tiny(Backbone):
            def __init__(self, in_channels=3):
                super().__init__()
                self.in_channels = in_channels
                self.conv = torch.nn.Conv2d(in_channels, 5, 3, stride=2, padding=1)
                self.feature_info = [FeatureInfo("conv", 5, 2)]
                self.min_input_size = (2, 2)

            def forward_stages(self, x):
                self.check_input(x)
                return [self.conv(x)]

        def register():
            register_backbone("plugin_tiny")(Tiny)
    """
    _install_plugin(tmp_path, monkeypatch, "rlgen_tiny_plugin", source,
                    "rlgen_tiny_plugin:register")
    from rlgen.registry import BACKBONES
    from rlgen.vision.backbones import create_backbone

    try:
        assert "plugin_tiny" in BACKBONES
        out = create_backbone("plugin_tiny", in_channels=4)(__import__("torch").zeros(1, 4, 8, 8))
        assert tuple(out.shape) == (1, 5, 4, 4)
    finally:
        BACKBONES.unregister("plugin_tiny")
        sys.modules.pop("rlgen_tiny_plugin", None)


def test_broken_plugin_warns_and_does_not_crash(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "rlgen_broken_plugin",
                    "raise ImportError('this plugin is broken')\n", "rlgen_broken_plugin")
    reg = make_registry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.create("alpha") == ("alpha", 1)
    messages = [str(w.message) for w in caught]
    assert any("rlgen_broken_plugin" in m and "this plugin is broken" in m for m in messages)
    sys.modules.pop("rlgen_broken_plugin", None)
