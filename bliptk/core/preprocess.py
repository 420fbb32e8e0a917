"""Reading images and turning them into the image encoder's input.

BLIP's preprocessing is: RGB, bicubic resize to a square (384 px for both checkpoints), scale to
[0, 1], normalise with the CLIP mean and std. bliptk does exactly what ``transformers``'
``BlipImageProcessor`` does (equal to 1e-5), and also accepts what users actually have: paths,
PIL images of any mode, NumPy arrays and torch tensors, with EXIF orientation applied.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError, InputError, VideoLoadError

__all__ = ["Preprocessor", "check_readable_file", "load_image", "load_image_bytes", "to_rgb", "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""The per-channel mean (RGB) that pixels are normalised with, CLIP's."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The per-channel standard deviation (RGB) that pixels are normalised with, CLIP's."""

DEFAULT_MAX_PIXELS = 100_000_000


def load_image(source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read one image as an RGB PIL image.

    Args:
        source: A path, a PIL image, a NumPy array (``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4;
            uint8, or float in [0, 1]), or a torch tensor (``(C, H, W)``, uint8 or float in [0, 1],
            the torchvision convention).
        max_pixels: Refuse a file with more pixels than this (decompression bombs), before
            decoding it; None for no limit of bliptk's (Pillow's own, about 179 million, stays).

    Returns:
        An RGB image, EXIF orientation applied, transparent pixels composited on white. For an
        animated image (GIF, APNG, WebP) the first frame.

    Raises:
        ImageLoadError: The input cannot be read as an image; the message names it.
    """
    if isinstance(source, (str, os.PathLike)):
        image = _open_path(Path(source), max_pixels)
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, "NumPy array", channels_last=True)
    elif _is_torch_tensor(source):
        image = _from_array(source.detach().cpu().numpy(), "torch tensor", channels_last=False)
    else:
        raise ImageLoadError(repr(source)[:80], f"unsupported image type {type(source).__name__}")
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(
            source if isinstance(source, str | os.PathLike) else type(source).__name__, f"has no pixels ({image.width}x{image.height})"
        )
    return to_rgb(ImageOps.exif_transpose(image))


def _is_torch_tensor(source) -> bool:
    # Without importing torch: bliptk's ONNX runner reads images where torch is not installed.
    return type(source).__module__.split(".")[0] == "torch" and hasattr(source, "detach")


def check_readable_file(path: Path, error: type[InputError] = ImageLoadError) -> None:
    """Raise ``error`` (naming ``path``) unless it is a non-empty regular file: never open a FIFO,
    a device or a link loop, which would hang or fail obscurely."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise error(path, "no such file (or a broken link)" if path.is_symlink() else "no such file") from None
    except PermissionError:
        raise error(path, "permission denied") from None
    except OSError as problem:  # a link loop, a name too long, ...
        raise error(path, f"cannot be read ({problem.strerror or problem})") from None
    if stat.S_ISDIR(status.st_mode):
        raise error(path, f"is a directory, not {'a video' if error is VideoLoadError else 'an image'} file")
    if not stat.S_ISREG(status.st_mode):
        raise error(path, "is not a regular file (a FIFO, socket or device); bliptk reads files only")
    if status.st_size == 0:
        raise error(path, "empty file (0 bytes)")


def _open_path(path: Path, max_pixels: int | None) -> Image.Image:
    check_readable_file(path)
    return _decoded(path, path, max_pixels)


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read one image from its encoded bytes (a file fetched from a URI), as [`load_image()`][bliptk.core.preprocess.load_image]
    reads a file: the same checks, the same errors naming ``name``.

    Raises:
        ImageLoadError: The bytes are no image Pillow can read, or one over ``max_pixels``.
    """
    import io

    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    return to_rgb(ImageOps.exif_transpose(_decoded(io.BytesIO(data), name, max_pixels)))


def _decoded(source, name, max_pixels: int | None) -> Image.Image:
    """Decode an image from a path or file object, refusing one over ``max_pixels`` before
    decoding it."""
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(name, f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} (max_pixels)")
            image.load()
            return image
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(name, _bomb_reason(error, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file Pillow can read") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(name, f"corrupt or truncated image ({error})") from None


def _bomb_reason(error: Exception, max_pixels: int | None) -> str:
    """Why an image past Pillow's own limit is refused, worded as bliptk's limit is. Pillow refuses
    it while reading the header, before its size can be asked, and names its pixel count only."""
    pixels = re.search(r"\((\d+) pixels\)", str(error))
    count = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels than Pillow opens"
    if max_pixels is not None:
        return f"{count}, over the limit of {max_pixels:,} (max_pixels)"
    return f"{count}, over Pillow's safety limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} (Image.MAX_IMAGE_PIXELS)"


def _from_array(array: np.ndarray, kind: str, channels_last: bool) -> Image.Image:
    if array.ndim == 3 and not channels_last:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        layout = "(H, W, C)" if channels_last else "(C, H, W)"
        raise ImageLoadError(kind, f"shape {tuple(array.shape)} is not an image; expected {layout} with 1, 3 or 4 channels")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageLoadError(kind, f"dtype {array.dtype}; expected uint8, or float in [0, 1]")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB as ``transformers`` does, and 16/32-bit modes sensibly.

    Transparency (RGBA, LA, P with a transparent colour) is composited on white, as in
    ``transformers.image_transforms.convert_to_rgb``; 16- and 32-bit greyscale are scaled to
    8 bits instead of being clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray((np.clip(values, 0, top) / top * 255.0).round().astype(np.uint8))
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


@dataclass(frozen=True)
class Preprocessor:
    """Image -> normalised ``(3, S, S)`` pixels, BLIP style (NumPy; no torch needed).

    Attributes:
        image_size: Side of the square the image is resized to (384 for both checkpoints).
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
    """

    image_size: int = 384
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __eq__(self, other: object) -> bool:
        # A runtime's subclass (one giving tensors) does the same preprocessing, so it is equal.
        if not isinstance(other, Preprocessor):
            return NotImplemented
        return (self.image_size, self.mean, self.std) == (other.image_size, other.mean, other.std)

    def __hash__(self) -> int:
        return hash((self.image_size, self.mean, self.std))

    @classmethod
    def from_config(cls, config: dict, image_size: int) -> Preprocessor:
        """From a Hugging Face ``preprocessor_config.json`` dict.

        Raises:
            ValueError: The size is no positive integer, or the mean and std are not three numbers
                each (std nonzero).
        """
        if not isinstance(config, dict):
            raise ValueError(f"a preprocessor config is a JSON object, not {type(config).__name__}")
        size = config.get("size", image_size)
        if isinstance(size, dict):
            size = size.get("height", size.get("shortest_edge", image_size))
        mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        for name, values in (("image_mean", mean), ("image_std", std)):
            if (
                not isinstance(values, list | tuple)
                or len(values) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            ):
                raise ValueError(f"{name} must be three numbers, got {values!r}")
        if 0 in std:
            raise ValueError(f"image_std must not hold 0, got {std!r}")
        return cls(size, (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2])))

    def to_config(self) -> dict:
        """As a Hugging Face ``preprocessor_config.json`` dict (what [`from_config()`][bliptk.core.preprocess.Preprocessor.from_config] reads)."""
        return {
            "image_processor_type": "BlipImageProcessor",
            "size": {"height": self.image_size, "width": self.image_size},
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_resize": True,
            "do_normalize": True,
        }

    def __call__(self, images) -> np.ndarray:
        """Preprocess one image or a list of them.

        Returns:
            Pixel values ``(B, 3, S, S)``, a float32 NumPy array (B = 1 for a single image). The
            torch runtime's preprocessor
            ([`TensorPreprocessor`][bliptk.model.image_encoder.TensorPreprocessor], a captioner's
            ``preprocessor``) gives a torch tensor.
        """
        return self.arrays(images)

    def arrays(self, images) -> np.ndarray:
        """Pixel values ``(B, 3, S, S)`` of one image or a list of them, a float32 NumPy array."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return np.stack([self.array(load_image(image)) for image in images])

    def array(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> ``(3, S, S)`` float32 NumPy array."""
        resized = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(resized, dtype=np.float64) * (1.0 / 255.0)
        pixels = (pixels - np.asarray(self.mean)) / np.asarray(self.std)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
