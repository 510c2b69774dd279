"""Revisited-format datasets: any folder with ``gnd_<name>.pkl`` and ``jpg/<image>.jpg`` (Radenović et al., 2018).

ROxford5k and RParis6k use this layout (revisitop ``python/dataset.py``), and so do the embedded demo set and any
set a user builds. Queries are cropped to their ``bbx`` the way revisitop's Python code does it (Pillow's ``crop``,
which rounds the float box and zero-pads outside the image); ``crop_mode="trunc"`` reproduces CVNet/SuperGlobal/DOLG
(``int()`` truncation, clipped to the image).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from irlib.data.images import load_image
from irlib.io import load_data_pickle, sha256_file

CropMode = Literal["round", "trunc"]
CROP_MODES: tuple[str, ...] = ("round", "trunc")
_KEYS = ("imlist", "qimlist", "gnd")
GND_FIELDS: tuple[str, ...] = ("easy", "hard", "junk")
"""The per-query fields of a revisited ground truth: positive (easy, hard) and junk database indices."""


def validate_gnd(gnd: Sequence[Mapping[str, Any]], n_db: int | None = None) -> None:
    """Raise ``ValueError`` naming the query and field unless ``gnd`` is a well-formed revisited ground truth.

    Each query needs integer ``easy``/``hard``/``junk`` lists that are disjoint and duplicate-free, and, when
    ``n_db`` is given, inside ``[0, n_db)``.
    """
    if isinstance(gnd, Mapping):
        raise ValueError("gnd must be the per-query list (cfg['gnd'] of a revisitop pickle), not the whole dict")
    for i, q in enumerate(gnd):
        if not isinstance(q, Mapping):
            raise ValueError(f"gnd[{i}] must be a mapping with fields {GND_FIELDS}, got {type(q).__name__}")
        missing = [f for f in GND_FIELDS if f not in q]
        if missing:
            raise ValueError(f"gnd[{i}] lacks field(s) {missing}; each query needs {GND_FIELDS}")
        for f in GND_FIELDS:
            arr = np.asarray(q[f])
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"gnd[{i}][{f!r}] must hold integer database indices, got dtype {arr.dtype}")
            if n_db is not None and arr.size and (arr.min() < 0 or arr.max() >= n_db):
                raise ValueError(f"gnd[{i}][{f!r}] has indices outside [0, {n_db}) (min {arr.min()}, max {arr.max()})")
        ids = np.concatenate([np.asarray(q[f], dtype=np.int64).ravel() for f in GND_FIELDS])
        if np.unique(ids).size != ids.size:
            raise ValueError(f"gnd[{i}]: easy/hard/junk must be disjoint and free of duplicates")


def crop_query(img: Image.Image, bbx: Sequence[float], mode: CropMode = "round") -> Image.Image:
    """Crop a query image to its box ``[x1, y1, x2, y2]``.

    ``"round"``: Pillow's ``crop`` (revisitop; rounds half to even, zero-pads outside the image).
    ``"trunc"``: ``int()`` of every coordinate, clipped to the image (CVNet, SuperGlobal, DOLG).
    """
    if mode == "round":
        return img.crop(tuple(float(v) for v in bbx))
    if mode == "trunc":
        x1, y1, x2, y2 = (int(v) for v in bbx)
        w, h = img.size
        return img.crop((max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)))
    raise ValueError(f"unknown crop mode {mode!r}; expected one of {CROP_MODES}")


@dataclass(frozen=True)
class RevisitedDataset:
    """A test set in the revisited format.

    Attributes:
        name: the ``<name>`` of ``gnd_<name>.pkl``.
        root: the folder holding the pickle and ``jpg/``.
        imlist: database image names (no extension), in index order.
        qimlist: query image names.
        gnd: one dict per query with ``bbx`` (4 floats) and sorted ``easy``/``hard``/``junk`` database indices.
        distractors: extra database images appended after ``imlist`` (e.g. revisitop1m, see
            :meth:`with_distractors`); every one is a negative for every query, so ``gnd`` is unchanged.
    """

    name: str
    root: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]
    distractors: tuple[Path, ...] = field(default=(), repr=False)
    distractor_name: str | None = None

    @classmethod
    def from_dir(cls, root: str | os.PathLike, name: str | None = None) -> RevisitedDataset:
        """Load ``root/gnd_<name>.pkl``; ``name`` may be omitted when the folder holds exactly one such pickle."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        if name is None:
            found = sorted(root.glob("gnd_*.pkl"))
            if len(found) != 1:
                raise FileNotFoundError(
                    f"{root} must hold exactly one gnd_<name>.pkl (found {[p.name for p in found]}); pass name="
                )
            name = found[0].stem[len("gnd_") :]
        path = root / f"gnd_{name}.pkl"
        if not path.is_file():
            raise FileNotFoundError(f"ground truth {path} does not exist (expected gnd_<name>.pkl and jpg/ in {root})")
        official = _official_gnd_sha256(name)
        fix = f"download it again (python -m irlib download {name})" if official else "write it again"
        cfg = load_data_pickle(path, "revisited ground truth (gnd_<name>.pkl)", fix)
        if official and sha256_file(path) != official:
            warnings.warn(
                f"{path} is not the official {name} ground truth (its SHA-256 differs from the published file's): "
                f"numbers computed with it are not comparable with published ones; `python -m irlib download {name}` "
                f"fetches the official file",
                stacklevel=2,
            )
        return cls(name=name, root=root, **_parse(cfg, path))

    @classmethod
    def from_root(cls, data_root: str | os.PathLike, name: str) -> RevisitedDataset:
        """Load the set ``name`` from ``data_root/name/`` (revisitop's ``<root>/<dataset>/gnd_<dataset>.pkl``)."""
        return cls.from_dir(Path(data_root) / name, name)

    @property
    def gnd_path(self) -> Path:
        return self.root / f"gnd_{self.name}.pkl"

    def with_distractors(self, distractors: Distractors) -> RevisitedDataset:
        """This test set with ``distractors`` appended to its database (ROxf+1M, RPar+1M).

        Raises ValueError when a distractor path is one of this set's query or database images (paths compared
        after lexical normalisation, so ``a/../jpg/x.jpg`` counts; the same image under another name is not seen).
        """
        own = [self.image_path(n) for n in self.imlist + self.qimlist]
        names, resolved = {p.name for p in own}, {os.path.abspath(p) for p in own}
        # Only distractors with the file name of a test image are normalised: cheap for a million of them.
        clashes = [p for p in distractors.paths if p.name in names and os.path.abspath(p) in resolved]
        if clashes:
            shown = ", ".join(map(str, clashes[:5])) + (", ..." if len(clashes) > 5 else "")
            raise ValueError(
                f"{len(clashes)} distractor(s) of {distractors.name!r} are query or database images of {self.label}: "
                f"{shown}; distractors must be other images (every one counts as a negative for every query)"
            )
        return replace(self, distractors=tuple(distractors.paths), distractor_name=distractors.name)

    @property
    def label(self) -> str:
        """The name results carry: ``roxford5k``, or ``roxford5k+r1m`` with the R1M distractors."""
        return f"{self.name}+{self.distractor_name}" if self.distractor_name else self.name

    @property
    def n_db(self) -> int:
        return len(self.imlist) + len(self.distractors)

    @property
    def n_queries(self) -> int:
        return len(self.qimlist)

    @property
    def bbx(self) -> np.ndarray:
        """Query boxes ``(n_queries, 4)`` as float ``[x1, y1, x2, y2]``."""
        return np.array([q["bbx"] for q in self.gnd], dtype=np.float64).reshape(-1, 4)

    def image_path(self, image: str) -> Path:
        return self.root / "jpg" / f"{image}.jpg"

    @property
    def db_paths(self) -> list[Path]:
        return [self.image_path(n) for n in self.imlist] + list(self.distractors)

    @property
    def query_paths(self) -> list[Path]:
        return [self.image_path(n) for n in self.qimlist]

    def load_db_image(self, i: int) -> Image.Image:
        """Database image ``i`` (``0 <= i < n_db``) as RGB, in ``db_paths`` order: ``imlist``, then distractors."""
        if not 0 <= i < self.n_db:
            raise IndexError(f"database index {i} is outside [0, {self.n_db}) of {self.label}")
        n = len(self.imlist)
        path = self.image_path(self.imlist[i]) if i < n else self.distractors[i - n]
        return load_image(path, dataset=self.label)

    def load_query(self, i: int, *, crop: bool = True, crop_mode: CropMode = "round") -> Image.Image:
        """Query ``i`` as RGB, cropped to its box unless ``crop=False``."""
        img = load_image(self.image_path(self.qimlist[i]), dataset=self.name)
        return crop_query(img, self.gnd[i]["bbx"], crop_mode) if crop else img

    def missing_images(self) -> list[Path]:
        """Database and query files that do not exist."""
        return [p for p in self.db_paths + self.query_paths if not p.is_file()]


@dataclass(frozen=True)
class Distractors:
    """A list of distractor images, e.g. revisitop1m: ``<root>/revisitop1m.txt`` holds one relative path per line,
    extension included (revisitop ``python/dataset.py``), images under ``<root>/jpg/``.

    Attributes:
        name: a label for results (``"r1m"`` for revisitop1m, the name published results use too).
        paths: the image files, in list order.
        missing: listed files not found (``on_missing="skip"``); recorded so results say how many were used
            (the official list names more images than its tarballs hold, SOLAR #8).
    """

    name: str
    paths: list[Path]
    missing: list[str]

    @classmethod
    def from_list(
        cls,
        root: str | os.PathLike,
        list_file: str = "revisitop1m.txt",
        *,
        image_dir: str = "jpg",
        name: str = "r1m",
        on_missing: Literal["error", "skip"] = "error",
    ) -> Distractors:
        """Read ``root/list_file``; missing images raise (naming the first few) or, with ``"skip"``, are left out."""
        root = Path(root)
        listing = root / list_file
        if not listing.is_file():
            raise FileNotFoundError(f"distractor list {listing} does not exist")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        paths = [root / image_dir / n for n in names]
        missing = [n for n, p in zip(names, paths, strict=True) if not p.is_file()]
        if missing and on_missing == "error":
            shown = ", ".join(missing[:5])
            raise FileNotFoundError(
                f"{len(missing)} of {len(names)} distractors listed in {listing} are missing under "
                f"{root / image_dir}: {shown}{', ...' if len(missing) > 5 else ''} (on_missing='skip' uses the rest)"
            )
        kept = set(missing)
        return cls(name=name, paths=[p for n, p in zip(names, paths, strict=True) if n not in kept], missing=missing)


def _official_gnd_sha256(name: str) -> str | None:
    """The published SHA-256 of ``gnd_<name>.pkl`` for an official set (ROxford5k, RParis6k), else None."""
    from irlib.data.download import GND_SHA256  # the download table sits above the dataset readers

    return GND_SHA256[name][0] if name in GND_SHA256 else None


def _parse(cfg: Any, path: Path) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a dict with keys {_KEYS}, got {type(cfg).__name__}")
    missing = [k for k in _KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a revisited gnd pickle has {_KEYS}")
    imlist, qimlist, gnd = (list(cfg[k]) for k in _KEYS)
    if len(gnd) != len(qimlist):
        raise ValueError(f"{path}: 'gnd' has {len(gnd)} entries but 'qimlist' has {len(qimlist)}")
    try:
        validate_gnd(gnd, n_db=len(imlist))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    queries = []
    for i, q in enumerate(gnd):
        bbx = q.get("bbx")
        if bbx is None or len(bbx) != 4:
            raise ValueError(f"{path}: gnd[{i}]['bbx'] must be [x1, y1, x2, y2], got {bbx!r}")
        box = [float(v) for v in bbx]
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{path}: gnd[{i}]['bbx'] {box} is empty (need x2 > x1 and y2 > y1)")
        queries.append({**q, "bbx": box, **{f: sorted(int(v) for v in q[f]) for f in ("easy", "hard", "junk")}})
    overlap = set(imlist) & set(qimlist)
    if overlap:
        raise ValueError(f"{path}: queries must not be database images, found {sorted(overlap)[:5]}")
    return {"imlist": imlist, "qimlist": qimlist, "gnd": queries}
