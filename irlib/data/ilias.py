"""ILIAS core set: instances, image and text queries, positives (``datasets.md`` §7; ilias-vrg/ilias, MIT).

Layout (``download/README.md``): ``<root>/<instance>/query/QNNN_yy.jpg`` with ``QNNN_yy_bbox.txt``, text queries
``<root>/<instance>/query/TNNN.txt``, positives ``<root>/<instance>/pos/PNNN_zz.jpg`` with ``PNNN_zz_bbox.txt``;
``*_url.txt`` files are ignored. ``root`` is ``ilias_core`` itself or a folder holding it.

An image id is its path relative to ``root`` (``<instance>/query/Q000_00.jpg``), as in the official id files, and
the instance of an id is ``id.split('/')[0]``. Bbox files hold one or more lines ``x_topleft y_topleft width height``
in pixels (xywh); they are returned as ``(n, 4)`` float arrays of **x1 y1 x2 y2** with ``x2 = x + w`` and
``y2 = y + h`` (no -1), the order of revisitop boxes. Every image query needs a bbox file; a positive may lack one
(then its boxes are ``(0, 4)``). The database is the positives followed by the distractors; queries are never in it.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IliasDataset", "IliasImage", "IliasTextQuery", "read_bbox_file"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TEXT_RE = re.compile(r"T\d+\.txt")


@dataclass(frozen=True, eq=False)
class IliasImage:
    """An image query or positive: ``id`` relative to the root, its ``instance`` and ``(n, 4)`` x1y1x2y2 ``boxes``."""

    id: str
    instance: str
    boxes: np.ndarray


@dataclass(frozen=True)
class IliasTextQuery:
    """A text query: ``id`` (``<instance>/query/TNNN.txt``), its ``instance`` and the stripped ``text``."""

    id: str
    instance: str
    text: str


@dataclass(frozen=True, eq=False)
class IliasDataset:
    """The ILIAS core set read by :meth:`from_dir`; ``distractor_ids`` is empty unless a list was given."""

    root: Path
    instances: tuple[str, ...]
    image_queries: tuple[IliasImage, ...]
    text_queries: tuple[IliasTextQuery, ...]
    positives: tuple[IliasImage, ...]
    distractor_ids: tuple[str, ...] = ()

    @classmethod
    def from_dir(cls, root: str | os.PathLike, distractor_ids: str | os.PathLike | None = None) -> IliasDataset:
        """Scan ``root`` (instances sorted by name, files by name); ``distractor_ids`` is an optional id list, one id
        per line, plain or gzipped (``distractor_ids.txt.gz``, ids ``<shard>/<key>``).

        Raises FileNotFoundError for a missing folder or query bbox file and ValueError, naming the file, for a
        malformed bbox or text file, an unexpected file, a bbox file without its image, an instance without image
        query or positive, and a distractor id listed twice or equal to a core image id.
        """
        root = Path(root)
        if (root / "ilias_core").is_dir():
            root = root / "ilias_core"
        if not root.is_dir():
            raise FileNotFoundError(f"ILIAS root {root} is not a folder")
        instances = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not instances:
            raise ValueError(f"{root} holds no instance folder (expected <instance>/query and <instance>/pos)")
        queries: list[IliasImage] = []
        texts: list[IliasTextQuery] = []
        positives: list[IliasImage] = []
        for instance in instances:
            images, instance_texts = _scan(root, instance, "query")
            queries += images
            texts += instance_texts
            pos, _ = _scan(root, instance, "pos")
            positives += pos
        distractors = () if distractor_ids is None else _read_distractors(Path(distractor_ids), queries + positives)
        return cls(root, instances, tuple(queries), tuple(texts), tuple(positives), distractors)

    def positives_of(self, instance: str) -> list[str]:
        """Ids of the positives of ``instance`` (its ground truth)."""
        return [p.id for p in self.positives if p.instance == instance]

    def database_ids(self) -> list[str]:
        """The database: positive ids, then distractor ids."""
        return [p.id for p in self.positives] + list(self.distractor_ids)

    def ground_truth(self, queries: Iterable[IliasImage | IliasTextQuery]) -> list[list[int]]:
        """For each query, the indices in :meth:`database_ids` of its instance's positives (for ``ilias_map_at_k``)."""
        by_instance: dict[str, list[int]] = {}
        for i, p in enumerate(self.positives):
            by_instance.setdefault(p.instance, []).append(i)
        return [by_instance[q.instance] for q in queries]

    def path(self, image_id: str) -> Path:
        """File of a core image id."""
        return self.root / image_id


def read_bbox_file(path: str | os.PathLike) -> np.ndarray:
    """``(n, 4)`` x1y1x2y2 boxes of a bbox file of lines ``x y w h`` (blank lines ignored; at least one box)."""
    boxes: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                x, y, w, h = (float(v) for v in fields)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: expected 4 numbers 'x y w h', got {line.strip()!r}") from None
            if not all(np.isfinite((x, y, w, h))) or w < 0 or h < 0:
                raise ValueError(f"{path}:{line_no}: box {line.strip()!r} needs finite values and width, height >= 0")
            boxes.append([x, y, x + w, y + h])
    if not boxes:
        raise ValueError(f"{path}: no box in the bbox file")
    return np.asarray(boxes, dtype=np.float64)


def _scan(root: Path, instance: str, kind: str) -> tuple[list[IliasImage], list[IliasTextQuery]]:
    """Images (with boxes) and, in ``query``, text queries of ``<root>/<instance>/<kind>``."""
    folder = root / instance / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing (each ILIAS instance has query/ and pos/ folders)")
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    stems = {Path(n).stem for n in names if n.lower().endswith(IMAGE_SUFFIXES)}
    images: list[IliasImage] = []
    texts: list[IliasTextQuery] = []
    for name in names:
        file = folder / name
        image_id = f"{instance}/{kind}/{name}"
        if name.lower().endswith(IMAGE_SUFFIXES):
            bbox = folder / f"{Path(name).stem}_bbox.txt"
            if bbox.is_file():
                boxes = read_bbox_file(bbox)
            elif kind == "query":
                raise FileNotFoundError(f"{bbox} is missing (every image query has a bbox file)")
            else:
                boxes = np.empty((0, 4), dtype=np.float64)
            images.append(IliasImage(image_id, instance, boxes))
        elif name.endswith("_bbox.txt"):
            if name[: -len("_bbox.txt")] not in stems:
                raise ValueError(f"{file}: bbox file without its image")
        elif name.endswith("_url.txt"):
            continue
        elif kind == "query" and _TEXT_RE.fullmatch(name):
            text = file.read_text(encoding="utf-8").strip()
            if not text:
                raise ValueError(f"{file}: empty text query")
            texts.append(IliasTextQuery(image_id, instance, text))
        else:
            raise ValueError(f"{file}: unexpected file in an ILIAS {kind}/ folder")
    if not images:
        raise ValueError(f"{folder} holds no image {'query' if kind == 'query' else 'positive'}")
    return images, texts


def _read_distractors(path: Path, core: list[IliasImage]) -> tuple[str, ...]:
    """Distractor ids, one per line, checked for duplicates and overlap with the core images."""
    opener = gzip.open if path.suffix == ".gz" else open
    core_ids = {c.id for c in core}
    first_line: dict[str, int] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            image_id = line.strip()
            if not image_id:
                continue
            if image_id in first_line:
                raise ValueError(
                    f"{path}:{line_no}: {image_id!r} is listed twice (lines {first_line[image_id]} and {line_no})"
                )
            if image_id in core_ids:
                raise ValueError(f"{path}:{line_no}: {image_id!r} is a core image, not a distractor")
            first_line[image_id] = line_no
    return tuple(first_line)
