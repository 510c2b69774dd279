"""Image decoding with errors that name the file and the dataset; images are files or members of tar shards."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "ImageRef", "TarMember", "as_image_ref", "load_image"]


class ImageLoadError(OSError):
    """An image that is missing or cannot be decoded; the message names the file and the dataset."""


@dataclass(frozen=True)
class TarMember:
    """An image stored uncompressed in a tar file (a webdataset shard): ``size`` bytes at byte ``offset`` of ``shard``.

    Reading it is one seek and one read (no extraction to disk), so it works in DataLoader worker processes.
    """

    shard: Path
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}::{self.name}"

    def read(self) -> bytes:
        """The member's bytes; a missing shard or one shorter than the member raises :class:`ImageLoadError`."""
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.size)
        except OSError as err:
            raise ImageLoadError(f"member {self.name!r} of tar shard {self.shard} cannot be read: {err}") from err
        if len(data) != self.size:
            raise ImageLoadError(
                f"tar shard {self.shard} is truncated: member {self.name!r} needs bytes {self.offset}-"
                f"{self.offset + self.size}, the file ends before"
            )
        return data


ImageRef = Path | TarMember
"""Where an image is: a file, or a member of a tar shard."""


def as_image_ref(ref: str | os.PathLike | TarMember) -> ImageRef:
    """A :class:`TarMember` as it is, anything else as a :class:`~pathlib.Path`."""
    return ref if isinstance(ref, TarMember) else Path(ref)


def load_image(
    ref: str | os.PathLike | TarMember, *, dataset: str | None = None, exif_transpose: bool = False
) -> Image.Image:
    """Decode an image file or tar member fully into an RGB PIL image.

    ``exif_transpose``: rotate/flip by the EXIF orientation (ILIAS ``generators.py`` does for its core images;
    revisitop does not).
    """
    where = f" of dataset {dataset!r}" if dataset else ""
    ref = as_image_ref(ref)
    if isinstance(ref, TarMember):
        what = f"member {ref.name!r} of tar shard {ref.shard}{where}"
        source: Path | io.BytesIO = io.BytesIO(ref.read())
    else:
        what = f"image {ref}{where}"
        if not ref.is_file():
            raise ImageLoadError(f"{what} does not exist")
        source = ref
    try:
        with Image.open(source) as img:
            rgb = img.convert("RGB")
        return ImageOps.exif_transpose(rgb) if exif_transpose else rgb
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{what} is corrupt or not an image: {err}") from err
