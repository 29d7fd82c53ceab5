"""Turn user images into normalised backbone input: the one preprocessing helper.

Every image is resized (bilinear, antialiased) to ``input_size x input_size`` with no crop,
so the anomaly map covers the whole image; grayscale becomes 3 identical channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectmap.data.io import ImageInput, as_image_array

__all__ = ["ImageInput", "as_image_array", "preprocess"]


def preprocess(
    images: Sequence[np.ndarray],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Resize, scale and normalise a batch of images for a backbone.

    Parameters
    ----------
    images : uint8 arrays (H_i, W_i) or (H_i, W_i, 3); sizes may differ.
    input_size : side of the square network input (no crop: the aspect ratio is not kept).
    mean, std : per-channel normalisation for pixels scaled to [0, 1].

    Returns
    -------
    Float32 tensor (N, 3, input_size, input_size).
    """
    out = torch.empty((len(images), 3, input_size, input_size), dtype=torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    for i, image in enumerate(images):
        # Copy read-only or strided arrays (torch.from_numpy needs writable, contiguous data).
        ok = image.flags.writeable and image.flags.c_contiguous
        x = torch.from_numpy(image if ok else np.array(image, order="C"))
        x = x.unsqueeze(0).expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
        x = x.float().div_(255.0).unsqueeze(0)
        if x.shape[-2:] != (input_size, input_size):
            x = F.interpolate(
                x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                antialias=True,
            )
        out[i] = (x[0] - mean_t) / std_t
    return out
