"""Reading one image file into a fixed-size RGB uint8 tensor: the single preprocessing path.

Training, evaluation and inference all go through `load_image`, so the pixels a model sees at
prediction time are produced exactly as during training.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 50_000_000  # larger files are refused before decoding (decompression-bomb guard)


class UnreadableImage(ValueError):
    """An image file that cannot be used; the message says why."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(source: str | Path | bytes, size: int) -> torch.Tensor:
    """Decode `source` (a path or the file's bytes) to a `3 x size x size` uint8 tensor.

    The shorter side is resized to `size` and the centre is cropped; EXIF orientation is
    honoured; greyscale, palette, CMYK, 16-bit and alpha images become RGB (alpha over white).
    Raises `UnreadableImage` with the reason when the file cannot be used.
    """
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as file:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if file.width * file.height > MAX_PIXELS:
                raise UnreadableImage(f"{name}: {file.width}x{file.height} pixels is over the {MAX_PIXELS:,} pixel limit")
            file.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            image = to_rgb(ImageOps.exif_transpose(file))
            image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(f"{name}: {error}") from None
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha is laid over white.

    16-bit greyscale is scaled from its full 0..65535 range (a dark 16-bit image stays dark); 32-bit
    integer greyscale, whose depth the file does not say, from 0..65535 when it uses values above 255,
    else 0..255; float greyscale from 0..1 when it stays within it, else likewise.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        if image.mode == "F" and pixels.max() <= 1.0:
            top = 1.0
        image = Image.fromarray((pixels.clip(0, top) * (255.0 / top)).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")
