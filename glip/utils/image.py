"""Image loading and the official test-time preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = ["ImageInput", "ImageLoadError", "load_image", "normalize_image", "resize_shape", "to_model_input"]

ImageInput = Union[str, Path, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """An input that cannot be read as an image."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit integer or float grey: scale the actual range [0, max] down to 8 bits
        # (a float image in [0, 1] is scaled by 255).
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(arr.max()) if arr.size else 0.0
        top = peak if peak > 255 else (1.0 if img.mode == "F" and 0 < peak <= 1.0 else 255.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white, as image viewers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(image: ImageInput) -> np.ndarray:
    """Any supported input -> ``uint8`` RGB array ``[H, W, 3]``.

    Paths and PIL images are turned upright with their EXIF orientation; grey,
    palette, RGBA and 16-bit images become RGB. A numpy array must already be
    ``[H, W, 3]`` uint8 RGB (or ``[H, W]`` grey).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise ImageLoadError(f"image not found: {path}")
        if path.is_dir():
            raise ImageLoadError(f"expected an image file, got a directory: {path}")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"cannot read {path} as an image: the file is empty")
        try:
            with Image.open(path) as img:
                img.load()  # the first frame of an animation
                image = ImageOps.exif_transpose(img)
        except UnidentifiedImageError:
            raise ImageLoadError(f"cannot read {path} as an image: not an image format Pillow knows") from None
        except Exception as e:  # OSError, SyntaxError, DecompressionBombError, ValueError of odd files
            raise ImageLoadError(f"cannot read {path} as an image: {type(e).__name__}: {e}") from None
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageLoadError("the image is empty (0 pixels)")
        try:
            return np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
        except Exception as e:  # a mode Pillow cannot convert to RGB
            raise ImageLoadError(f"cannot convert a {image.mode} image to RGB: {type(e).__name__}: {e}") from None
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageLoadError(f"an image array must be HxWx3 RGB, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ImageLoadError(f"an image array must be uint8, got {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageLoadError("the image is empty (0 pixels)")
        return np.ascontiguousarray(image)
    if isinstance(image, Tensor):
        raise ImageLoadError("pass images as paths, PIL images or HxWx3 uint8 numpy arrays, not tensors")
    raise ImageLoadError(f"unsupported image type {type(image).__name__}")


def resize_shape(height: int, width: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """The ``(h, w)`` the official ``Resize`` gives: the short side becomes ``min_size``
    unless that makes the long side exceed ``max_size``; the long side is truncated.

    Extreme aspect ratios (a 5000 x 2 strip) would round the short side to 0 pixels: both
    sides are kept at least 1 pixel (the official code would fail on such an image)."""
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least one pixel per side, got {height} x {width}")
    size = min_size
    short, long = float(min(height, width)), float(max(height, width))
    if max_size is not None and long / short * size > max_size:
        size = max(1, int(round(max_size * short / long)))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    long_side = max(1, int(size * long / short))
    if max_size is not None:
        long_side = min(long_side, max_size)  # only when the short side was raised to 1 pixel
    return (long_side, size) if width < height else (size, long_side)


def normalize_image(rgb: Tensor, mean: Sequence[float], std: Sequence[float], to_bgr255: bool = True) -> Tensor:
    """``Tensor[3, H, W]`` RGB in [0, 1] -> the network input (BGR, 0-255 scale, normalised)."""
    if to_bgr255:
        rgb = rgb[[2, 1, 0]] * 255
    mean_t = torch.as_tensor(mean, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    return (rgb - mean_t) / std_t


def to_model_input(
    image: np.ndarray,
    min_size: int,
    max_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    to_bgr255: bool = True,
) -> Tensor:
    """``uint8 [H, W, 3]`` RGB -> ``Tensor[3, h, w]`` float32 as the official test transforms:
    PIL bilinear resize, ``/255``, RGB->BGR, ``*255``, ``(x - mean) / std``."""
    h, w = resize_shape(image.shape[0], image.shape[1], min_size, max_size)
    pil = Image.fromarray(image)
    if (h, w) != (image.shape[0], image.shape[1]):
        pil = pil.resize((w, h), Image.BILINEAR)
    arr = torch.from_numpy(np.array(pil, dtype=np.uint8, copy=True))  # [h, w, 3]
    rgb = arr.permute(2, 0, 1).to(torch.float32) / 255.0  # [3, h, w]
    return normalize_image(rgb, mean, std, to_bgr255)
