"""Image decoding with errors that name the file and the dataset."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageLoadError(OSError):
    """An image that is missing or cannot be decoded; the message names the file and the dataset."""


def load_image(path: str | os.PathLike, *, dataset: str | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image (EXIF orientation is not applied, as in revisitop)."""
    where = f" of dataset {dataset!r}" if dataset else ""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image {path}{where} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"image {path}{where} is corrupt or not an image: {err}") from err
