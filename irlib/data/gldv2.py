"""Google Landmarks v2 training splits (GLDv2, GLDv2-clean, RGLDv2-clean) and retrieval files (``datasets.md`` §4-5).

Layout (cvdfoundation/google-landmark): images at ``<root>/train/<a>/<b>/<c>/<id>.jpg`` (a, b, c = the first three
characters of the 16-hex-character id); the metadata CSVs ``train_clean.csv`` (``landmark_id,images``, the images a
space-separated list of ids in one field) and ``train.csv`` (``id,url,landmark_id``) are looked up in ``<root>`` and
then in ``<root>/train`` (where :func:`irlib.data.synthetic.make_demo_data` writes them), unless ``csv_path`` is given.

Contiguous labels sort ``landmark_id`` numerically (SpCa/Token sort the strings). Parsing is vectorised: a full
GLDv2-clean CSV (81k rows, 1.58M ids) parses in about half a second, and every malformed row is reported with
its file and line number.

RGLDv2-clean (CiDeR, CVPR 2024) is GLDv2-clean minus 18 landmarks that overlap ROxf/RPar; their list is not public,
so :func:`rgldv2_clean` takes it as an exclusion file (one ``landmark_id`` per line) or as an image-id table: CiDeR
announced (never released) ``index_clean.csv``, a one-column CSV ``id`` of the *kept* image ids; a CSV
``excluded_id`` lists removed images instead (:func:`read_image_id_table`, :func:`read_rgldv2_file`). Table ids
that ``train_clean.csv`` does not list are counted in ``table_ids_not_found`` and warned about (an error with
``strict``): an inclusion table naming images the CSV lacks keeps fewer images than its author meant.

Retrieval: :func:`gldv2_index_test` reads ``index.csv``/``test.csv`` and :func:`gldv2_retrieval_solution` reads
``retrieval_solution_v2.1.csv`` for :func:`irlib.eval.metrics.gldv2_map_at_k`.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from irlib.data.train_set import OnMissing, TrainSet

__all__ = [
    "GLDV2_CLEAN_COUNTS",
    "IMAGE_TABLE_HEADERS",
    "RGLDV2_CLEAN_COUNTS",
    "GLDv2Counts",
    "GLDv2Retrieval",
    "ImageIdTable",
    "gldv2_counts",
    "gldv2_image_path",
    "gldv2_index_test",
    "gldv2_retrieval",
    "gldv2_retrieval_solution",
    "gldv2_train",
    "landmark_image_counts",
    "read_exclusion_file",
    "read_image_id_table",
    "read_label_to_category",
    "read_rgldv2_file",
    "rgldv2_clean",
]

GLDV2_CLEAN_COUNTS = (81_313, 1_580_470)
"""(classes, images) of the complete GLDv2-clean (CiDeR Table 3)."""
RGLDV2_CLEAN_COUNTS = (81_295, 1_578_905)
"""(classes, images) of RGLDv2-clean with the official exclusion list."""

_CLEAN_HEADER = ["landmark_id", "images"]
_FULL_HEADER = ["id", "url", "landmark_id"]
_ID_LEN = 16
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_ID_RE = re.compile(r"[0-9a-f]{16}")
_INT_RE = re.compile(r"[0-9]+")
_SHOW = 5


@dataclass(frozen=True)
class GLDv2Counts:
    """What a GLDv2 listing holds after exclusions.

    Attributes:
        source: ``"gldv2"`` (train.csv), ``"gldv2-clean"`` or ``"rgldv2-clean"``.
        csv: the CSV that was read.
        classes: landmarks kept.
        images: images kept.
        removed_classes: excluded landmarks found in the CSV.
        removed_images: images of those landmarks.
        exclusions_not_found: excluded landmark ids the CSV does not list.
        image_table: ``"include"`` or ``"exclude"`` when the exclusion was an image-id table, else ``""``.
        table_ids_not_found: image ids of that table that the CSV does not list.
        partially_removed_classes: landmarks that lost some but not all of their images (an image-id table can do
            that; CiDeR removed whole classes).
    """

    source: str
    csv: str
    classes: int
    images: int
    removed_classes: int = 0
    removed_images: int = 0
    exclusions_not_found: tuple[int, ...] = ()
    image_table: str = ""
    table_ids_not_found: int = 0
    partially_removed_classes: int = 0


TableKind = Literal["include", "exclude"]
IMAGE_TABLE_HEADERS: dict[str, TableKind] = {"id": "include", "excluded_id": "exclude"}
"""Header of an image-id table -> what its ids are: ``id`` the kept images (CiDeR's announced ``index_clean.csv``),
``excluded_id`` the removed ones."""


@dataclass(frozen=True, eq=False)
class ImageIdTable:
    """A one-column CSV of GLDv2 image ids that defines RGLDv2-clean at image level.

    Attributes:
        path: the file read.
        kind: ``"include"`` (the ids are the images kept) or ``"exclude"`` (the images removed).
        ids: ``(N, 16)`` uint8, the ASCII bytes of each id, in file order.
    """

    path: Path
    kind: TableKind
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def id_strings(self) -> list[str]:
        """The ids as ``str`` (a Python list; slow for millions, use ``ids`` there)."""
        return [bytes(row).decode("ascii") for row in self.ids]


Exclusion = str | os.PathLike | Iterable[int] | ImageIdTable


def gldv2_train(
    root: str | os.PathLike,
    *,
    clean: bool = True,
    exclude: Exclusion | None = None,
    transform: Callable[[Any], Any] | None = None,
    on_missing: OnMissing = "error",
    label_map: str | os.PathLike | dict[int, int] | None = None,
    csv_path: str | os.PathLike | None = None,
) -> TrainSet:
    """GLDv2-clean (``train_clean.csv``) or, with ``clean=False``, the full GLDv2 train split (``train.csv``).

    ``exclude``: landmark ids to drop, as an exclusion file (see :func:`read_exclusion_file`) or an iterable; or an
    image-id table (a file, see :func:`read_rgldv2_file`, or an :class:`ImageIdTable`) of kept or removed images.
    ``label_map``: a saved map (or mapping) to reuse; otherwise ids are sorted numerically.
    Counts are in ``dataset.info`` (fields of :class:`GLDv2Counts`). Malformed CSV rows raise ValueError naming the
    file and line; missing images raise FileNotFoundError or, with ``on_missing="skip"``, are dropped and reported.
    """
    ids, landmarks, counts = _listing(root, clean, exclude, csv_path, "gldv2-clean" if clean else "gldv2")
    return _train_set(root, ids, landmarks, counts, transform, on_missing, label_map)


def rgldv2_clean(
    root: str | os.PathLike,
    exclude_file: str | os.PathLike | ImageIdTable,
    *,
    transform: Callable[[Any], Any] | None = None,
    on_missing: OnMissing = "error",
    label_map: str | os.PathLike | dict[int, int] | None = None,
    csv_path: str | os.PathLike | None = None,
    strict: bool = False,
) -> TrainSet:
    """RGLDv2-clean: GLDv2-clean minus the landmarks of ``exclude_file``; ``dataset.info`` has the removed counts.

    ``exclude_file`` is a list of landmark ids (:func:`read_exclusion_file`) or an image-id table: header ``id``
    lists the images kept (CiDeR's announced ``index_clean.csv``), ``excluded_id`` the images removed
    (:func:`read_rgldv2_file` tells them apart). When the CSV is the complete GLDv2-clean (81,313 / 1,580,470) the
    result should be 81,295 classes / 1,578,905 images; otherwise the list is not the official one (a
    reconstruction), which warns, or raises with ``strict``. Table ids missing from the CSV warn, or raise with
    ``strict``.
    """
    ids, landmarks, counts = _listing(root, True, exclude_file, csv_path, "rgldv2-clean", strict=strict)
    full = (counts.classes + counts.removed_classes, counts.images + counts.removed_images)
    if full == GLDV2_CLEAN_COUNTS and (counts.classes, counts.images) != RGLDV2_CLEAN_COUNTS:
        msg = (
            f"{exclude_file} leaves {counts.classes} classes / {counts.images} images of the complete GLDv2-clean, "
            f"not the published RGLDv2-clean {RGLDV2_CLEAN_COUNTS[0]} / {RGLDV2_CLEAN_COUNTS[1]}: this exclusion "
            "list is not the official one"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return _train_set(root, ids, landmarks, counts, transform, on_missing, label_map)


def gldv2_counts(
    root: str | os.PathLike,
    *,
    clean: bool = True,
    exclude: Exclusion | None = None,
    csv_path: str | os.PathLike | None = None,
) -> GLDv2Counts:
    """Classes, images and removed counts of a listing, from the CSV alone (no image is touched)."""
    source = "gldv2" if not clean else "gldv2-clean" if exclude is None else "rgldv2-clean"
    return _listing(root, clean, exclude, csv_path, source)[2]


def read_exclusion_file(path: str | os.PathLike) -> list[int]:
    """Landmark ids, one per line; blank lines and ``#`` comments (whole-line or trailing) are ignored, and so is a
    ``landmark_id`` header. Anything else that is not a non-negative integer raises ValueError with the line."""
    out: list[int] = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text or (text == "landmark_id" and not out):
                continue
            if not _INT_RE.fullmatch(text):
                raise ValueError(f"{path}:{line_no}: expected one landmark_id (a non-negative integer), got {text!r}")
            out.append(int(text))
    return out


def read_image_id_table(path: str | os.PathLike, kind: TableKind | None = None) -> ImageIdTable:
    """Read a one-column CSV of GLDv2 image ids (16 lowercase hex characters, one per line, no quoting).

    The header says what the ids are (:data:`IMAGE_TABLE_HEADERS`): ``id``, the images kept (CiDeR's announced
    ``index_clean.csv``), or ``excluded_id``, the images removed; ``kind="exclude"`` reads an ``id`` table as removed
    images. Parsed as one byte block (1.58 M ids in well under a second); a malformed id, an unknown header or an id
    listed twice raises ValueError naming the file, the line and what was expected.
    """
    path = Path(path)
    data = path.read_bytes()
    data = data.removeprefix(b"\xef\xbb\xbf")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n")
    header = head.decode("utf-8", errors="replace").strip()
    if header not in IMAGE_TABLE_HEADERS:
        raise ValueError(
            f"{path}:1: unknown header {header!r} of an image-id table: expected 'id' (the images kept, as CiDeR's "
            "announced index_clean.csv) or 'excluded_id' (the images removed)"
        )
    table_kind = IMAGE_TABLE_HEADERS[header]
    if kind is not None:
        if kind not in ("include", "exclude"):
            raise ValueError(f"kind must be 'include', 'exclude' or None, got {kind!r}")
        if header == "excluded_id" and kind == "include":
            raise ValueError(f"{path}:1: the header 'excluded_id' lists removed images, but kind='include' was asked")
        table_kind = kind
    body = body.rstrip(b"\n")
    body = body + b"\n" if body else body
    width = _ID_LEN + 1
    ids = None
    if len(body) % width == 0:
        block = np.frombuffer(body, dtype=np.uint8).reshape(-1, width)
        if (block[:, _ID_LEN] == ord("\n")).all() and not (_HEX[block[:, :_ID_LEN]] == 255).any():
            ids = block[:, :_ID_LEN].copy()
    if ids is None:
        for line_no, line in enumerate(body.split(b"\n")[:-1], 2):
            text = line.decode("utf-8", errors="replace")
            if not _ID_RE.fullmatch(text):
                raise ValueError(
                    f"{path}:{line_no}: image id {text!r} is not 16 lowercase hexadecimal characters (expected one id "
                    f"per line under the header {header!r})"
                )
        raise AssertionError("unreachable: every line parsed")  # pragma: no cover
    _check_unique(ids, np.arange(2, len(ids) + 2), path)
    return ImageIdTable(path, table_kind, ids)


def read_rgldv2_file(path: str | os.PathLike) -> list[int] | ImageIdTable:
    """Read an RGLDv2-clean definition, telling the formats apart by the first line.

    * a list of landmark ids (:func:`read_exclusion_file`): a first line that is a ``#`` comment, blank,
      ``landmark_id`` or an integer;
    * an image-id table (:func:`read_image_id_table`): a first line ``id`` (kept images, CiDeR's announced
      ``index_clean.csv``) or ``excluded_id`` (removed images).

    Anything else raises ValueError naming the file and the formats expected.
    """
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", errors="replace").strip()
    if first in IMAGE_TABLE_HEADERS:
        return read_image_id_table(path)
    head = first.split("#", 1)[0].strip()
    if head in ("", "landmark_id") or _INT_RE.fullmatch(head):
        return read_exclusion_file(path)
    raise ValueError(
        f"{path}:1: unknown header {first!r}: expected 'landmark_id' (or no header) for a list of landmark ids, 'id' "
        "for a table of the image ids kept (CiDeR's announced index_clean.csv) or 'excluded_id' for a table of the "
        "image ids removed"
    )


def read_label_to_category(path: str | os.PathLike) -> dict[int, str]:
    """``train_label_to_category.csv`` (``landmark_id,category``, category a Wikimedia Commons URL) as
    ``{landmark_id: category}``, in file order. A malformed row or a landmark listed twice raises ValueError naming
    the file and line."""
    path = Path(path)
    out: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for line, row in _rows(path, ["landmark_id", "category"]):
        if len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 fields (landmark_id,category), got {len(row)}")
        lid = _landmark_id(row[0], path, line)
        if lid in out:
            raise ValueError(f"{path}:{line}: landmark_id {lid} is listed twice (lines {first_line[lid]} and {line})")
        first_line[lid] = line
        out[lid] = row[1]
    return out


def landmark_image_counts(root_or_csv: str | os.PathLike) -> dict[int, int]:
    """``{landmark_id: images}`` of a ``train_clean.csv`` (the file, or the folder holding it), ids ascending."""
    path = Path(root_or_csv)
    path = path if path.is_file() else _find_csv(path, "train_clean.csv")
    _, landmarks = _read_clean(path)
    uniq, counts = np.unique(landmarks, return_counts=True)
    return dict(zip(uniq.tolist(), counts.tolist(), strict=True))


def _train_set(
    root: str | os.PathLike,
    ids: np.ndarray,
    landmarks: np.ndarray,
    counts: GLDv2Counts,
    transform: Callable[[Any], Any] | None,
    on_missing: OnMissing,
    label_map: str | os.PathLike | dict[int, int] | None,
) -> TrainSet:
    if len(ids) and not (Path(root) / "train").is_dir():
        found = sorted(p.name for p in Path(root).iterdir()) if Path(root).is_dir() else []
        raise FileNotFoundError(
            f"{Path(root) / 'train'} is not a folder: GLDv2 images are expected at <root>/train/<a>/<b>/<c>/<id>.jpg "
            f"(root holds {found[:10] or 'nothing'}); pass the folder that holds train/"
        )
    return TrainSet(
        _relpaths(ids),
        landmarks,
        root=root,
        name=counts.source,
        transform=transform,
        label_map=label_map,
        on_missing=on_missing,
        info=asdict(counts),
    )


def _listing(
    root: str | os.PathLike,
    clean: bool,
    exclude: Exclusion | None,
    csv_path: str | os.PathLike | None,
    source: str,
    *,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray, GLDv2Counts]:
    """``(ids (N, 16) uint8, landmark ids (N,) int64, counts)`` after exclusions."""
    path = (
        Path(csv_path) if csv_path is not None else _find_csv(Path(root), "train_clean.csv" if clean else "train.csv")
    )
    ids, landmarks = _read_clean(path) if clean else _read_full(path)
    extra: dict[str, Any] = {}
    if isinstance(exclude, (str, os.PathLike)):
        exclude = read_rgldv2_file(exclude)
    if isinstance(exclude, ImageIdTable):
        keep, extra = _apply_table(ids, landmarks, exclude, strict)
    elif exclude is not None:
        excluded = np.unique(np.asarray(list(exclude), dtype=np.int64))
        found = np.isin(excluded, np.unique(landmarks))
        keep = ~np.isin(landmarks, excluded[found])
        extra["exclusions_not_found"] = tuple(int(v) for v in excluded[~found])
    if exclude is not None:
        before = np.unique(landmarks)
        ids, landmarks = ids[keep], landmarks[keep]
        after = np.unique(landmarks)
        extra["removed_classes"] = len(before) - len(after)
        extra["removed_images"] = int((~keep).sum())
    counts = GLDv2Counts(
        source=source,
        csv=str(path),
        classes=len(np.unique(landmarks)),
        images=len(landmarks),
        **extra,
    )
    return ids, landmarks, counts


def _apply_table(
    ids: np.ndarray, landmarks: np.ndarray, table: ImageIdTable, strict: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(keep mask (N,), counts fields)`` of an image-id table over a listing; unknown ids warn or raise."""
    hit, in_listing = _members(_keys(ids), _keys(table.ids))
    n_unknown = int((~in_listing).sum())
    if n_unknown:
        first = ", ".join(bytes(table.ids[i]).decode() for i in np.flatnonzero(~in_listing)[:_SHOW])
        effect = "those images cannot be kept" if table.kind == "include" else "nothing to remove for them"
        msg = (
            f"{table.path}: {n_unknown} of {len(table)} image ids are not in the training CSV (first: {first}); "
            f"{effect}"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=4)
    keep = hit if table.kind == "include" else ~hit
    dropped_per_class = np.unique(landmarks[~keep])
    kept_classes = np.unique(landmarks[keep])
    partial = int(np.isin(dropped_per_class, kept_classes).sum())
    return keep, {"image_table": table.kind, "table_ids_not_found": n_unknown, "partially_removed_classes": partial}


def _members(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(np.isin(a, b), np.isin(b, a))`` for unique uint64 keys, from one argsort of each and binary searches of
    sorted arrays (np.isin takes ~1.4 s a direction on 1.58 M ids; this ~0.5 s for both)."""
    out = []
    order_a, order_b = np.argsort(a), np.argsort(b)
    sorted_a, sorted_b = a[order_a], b[order_b]
    for sorted_x, order_x, sorted_y in ((sorted_a, order_a, sorted_b), (sorted_b, order_b, sorted_a)):
        hit = np.zeros(len(sorted_x), dtype=bool)
        if len(sorted_y):
            at = np.minimum(np.searchsorted(sorted_y, sorted_x), len(sorted_y) - 1)
            hit[order_x] = sorted_y[at] == sorted_x
        out.append(hit)
    return out[0], out[1]


def _keys(ids: np.ndarray) -> np.ndarray:
    """``(N, 16)`` hex id bytes (valid) -> ``(N,)`` uint64, the id's value: equal ids, equal keys."""
    nib = _HEX[ids]
    return np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view(">u8").reshape(-1).astype(np.uint64)


def _find_csv(root: Path, name: str) -> Path:
    candidates = [root / name, root / "train" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{name} not found (looked for {', '.join(map(str, candidates))}); download it from the GLDv2 metadata "
        "(cvdfoundation/google-landmark) or pass csv_path="
    )


def _rows(path: Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each data row, after checking the header."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        got = next(reader, None)
        if got != header:
            raise ValueError(f"{path}:1: expected the header {','.join(header)!r}, got {','.join(got or [])!r}")
        for row in reader:
            yield reader.line_num, row


def _read_clean(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``train_clean.csv``: ``landmark_id,images`` with images a space-separated id list."""
    fields: list[str] = []
    landmark_ids: list[int] = []
    lines: list[int] = []
    for line, row in _rows(path, _CLEAN_HEADER):
        if len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 fields (landmark_id,images), got {len(row)}")
        lid, images = row
        landmark_ids.append(_landmark_id(lid, path, line))
        n = len(images) + 1
        if not images:
            raise ValueError(f"{path}:{line}: empty images field for landmark_id {lid}")
        if not images.isascii() or n % (_ID_LEN + 1) or images.count(" ") != n // (_ID_LEN + 1) - 1:
            _bad_id_row(images, path, line)
        fields.append(images)
        lines.append(line)
    if not fields:
        return np.empty((0, _ID_LEN), np.uint8), np.empty(0, np.int64)
    per_row = np.array([(len(s) + 1) // (_ID_LEN + 1) for s in fields], dtype=np.int64)
    block = np.frombuffer((" ".join(fields) + " ").encode("ascii"), dtype=np.uint8).reshape(-1, _ID_LEN + 1)
    ids = block[:, :_ID_LEN]
    row_of = np.repeat(np.arange(len(fields)), per_row)
    bad = (_HEX[ids] == 255).any(axis=1) | (block[:, _ID_LEN] != ord(" "))
    if bad.any():
        r = row_of[np.argmax(bad)]
        _bad_id_row(fields[r], path, lines[r])
    _check_unique(ids, np.asarray(lines)[row_of], path)
    return ids, np.repeat(np.asarray(landmark_ids, dtype=np.int64), per_row)


def _read_full(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``train.csv``: ``id,url,landmark_id``, one image per row."""
    ids: list[str] = []
    landmark_ids: list[int] = []
    lines: list[int] = []
    for line, row in _rows(path, _FULL_HEADER):
        if len(row) != 3:
            raise ValueError(f"{path}:{line}: expected 3 fields (id,url,landmark_id), got {len(row)}")
        if len(row[0]) != _ID_LEN or not row[0].isascii():
            _bad_id(row[0], path, line)
        ids.append(row[0])
        landmark_ids.append(_landmark_id(row[2], path, line))
        lines.append(line)
    arr = np.frombuffer("".join(ids).encode("ascii"), dtype=np.uint8).reshape(-1, _ID_LEN)
    bad = (_HEX[arr] == 255).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        _bad_id(ids[i], path, lines[i])
    _check_unique(arr, np.asarray(lines), path)
    return arr, np.asarray(landmark_ids, dtype=np.int64)


def _landmark_id(text: str, path: Path, line: int) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"{path}:{line}: landmark_id must be a non-negative integer, got {text!r}")
    return int(text)


def _bad_id_row(images: str, path: Path, line: int) -> None:
    for token in images.split(" "):
        if not _ID_RE.fullmatch(token):
            _bad_id(token, path, line)
    raise ValueError(f"{path}:{line}: image ids must be separated by single spaces")


def _bad_id(token: str, path: Path, line: int) -> None:
    raise ValueError(f"{path}:{line}: image id {token!r} is not 16 lowercase hexadecimal characters")


def _check_unique(ids: np.ndarray, line_of: np.ndarray, path: Path) -> None:
    """Raise naming the first id listed twice and both lines (``ids`` are valid hex)."""
    key = _keys(ids)
    sorted_key = np.sort(key)
    if not (sorted_key[1:] == sorted_key[:-1]).any():
        return
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    i, j = order[dup[0]], order[dup[0] + 1]
    raise ValueError(
        f"{path}:{line_of[j]}: image id {ids[i].tobytes().decode()} is listed twice (lines {line_of[i]} and "
        f"{line_of[j]}); {len(dup)} duplicate id(s) in total"
    )


def _relpaths(ids: np.ndarray) -> np.ndarray:
    """``(N, 16)`` id bytes -> ``(N,)`` ``S32`` paths ``train/a/b/c/<id>.jpg``, built without a Python loop."""
    out = np.empty((len(ids), 32), dtype=np.uint8)
    out[:, 0:6] = np.frombuffer(b"train/", dtype=np.uint8)
    out[:, [7, 9, 11]] = ord("/")
    out[:, [6, 8, 10]] = ids[:, :3]
    out[:, 12:28] = ids
    out[:, 28:32] = np.frombuffer(b".jpg", dtype=np.uint8)
    return out.view("S32").reshape(-1)


_SOLUTION_HEADER = ["id", "images", "Usage"]
_USAGES = ("Public", "Private", "Ignored")


def gldv2_retrieval_solution(
    path: str | os.PathLike, usage: Iterable[str] = ("Public", "Private")
) -> dict[str, list[str]]:
    """Read ``retrieval_solution_v2.1.csv`` (``id,images,Usage``) into ``{test id: [relevant index ids]}``.

    As in DELF's ``ReadSolution``, ``Ignored`` rows are skipped without reading their images field (``None`` in the
    official file, whose README documents ``None`` only "if this image is ignored"), and every Public and Private
    row is a query. Only rows whose Usage is in ``usage`` are returned. The result feeds
    :func:`irlib.eval.metrics.gldv2_map_at_k`. Malformed rows raise ValueError naming the file and line: field count,
    ids, Usage tag, a test id listed twice, and a Public/Private row whose images field is ``None`` or empty (DELF
    does not check this; it would score such a query against the literal id ``None`` or ``''``, i.e. always 0),
    whatever ``usage`` asks for.
    """
    path = Path(path)
    wanted = set(usage)
    unknown = wanted - set(_USAGES)
    if unknown:
        raise ValueError(f"unknown usage {sorted(unknown)}; expected some of {_USAGES}")
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for line, row in _rows(path, _SOLUTION_HEADER):
        if len(row) != 3:
            raise ValueError(f"{path}:{line}: expected 3 fields (id,images,Usage), got {len(row)}")
        test_id, images, tag = row
        if not _ID_RE.fullmatch(test_id):
            _bad_id(test_id, path, line)
        if tag not in _USAGES:
            raise ValueError(f"{path}:{line}: Usage must be one of {_USAGES}, got {tag!r}")
        if test_id in seen:
            raise ValueError(f"{path}:{line}: test id {test_id} is listed twice")
        seen.add(test_id)
        if tag == "Ignored":
            continue
        if images in ("", "None"):
            raise ValueError(
                f"{path}:{line}: a {tag} row must list its relevant index ids, got {images or 'an empty field'!r} "
                "(the official solution has None only in Ignored rows)"
            )
        ids = images.split(" ")
        if not all(_ID_RE.fullmatch(i) for i in ids):
            _bad_id_row(images, path, line)
        if tag in wanted:
            out[test_id] = ids
    return out


def gldv2_index_test(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(index ids, test ids)`` from ``<root>/index.csv`` and ``<root>/test.csv`` (header ``id``), in file order.

    The images are at ``<root>/index/a/b/c/<id>.jpg`` and ``<root>/test/a/b/c/<id>.jpg`` (see :func:`gldv2_image_path`).
    Malformed or duplicate ids raise ValueError naming the file and line.
    """
    root = Path(root)
    return _read_ids(root / "index.csv"), _read_ids(root / "test.csv")


@dataclass(frozen=True, eq=False)
class GLDv2Retrieval:
    """The GLDv2 retrieval benchmark: ``index_ids`` (database), the ``solution`` queries and their relevant index ids.

    ``query_ids`` are the Public/Private test ids of the solution (``Ignored`` rows left out), in solution-file
    order; the other test images are never scored (DELF ``ReadSolution``).
    """

    root: Path
    index_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    solution: dict[str, list[str]]

    @property
    def query_ids(self) -> list[str]:
        return list(self.solution)

    @property
    def unscored_ids(self) -> list[str]:
        """Test ids outside the chosen solution (``Ignored`` rows, and the other Usage when one is chosen): pass them
        as ``gldv2_map_at_k(..., ignored=...)`` so that a submission over all test images is scored."""
        return [i for i in self.test_ids if i not in self.solution]

    def index_paths(self) -> list[Path]:
        return [self.root / gldv2_image_path("index", i) for i in self.index_ids]

    def query_paths(self) -> list[Path]:
        return [self.root / gldv2_image_path("test", i) for i in self.solution]


def gldv2_retrieval(
    root: str | os.PathLike,
    usage: Iterable[str] = ("Public", "Private"),
    solution_file: str = "retrieval_solution_v2.1.csv",
) -> GLDv2Retrieval:
    """Read ``index.csv``, ``test.csv`` and the retrieval solution from ``root``; every solution id must be a test id
    and every relevant id an index id (ValueError naming the file and the first offending ids otherwise)."""
    root = Path(root)
    index_ids, test_ids = gldv2_index_test(root)
    solution = gldv2_retrieval_solution(root / solution_file, usage)
    tests, index = set(test_ids), set(index_ids)
    unknown_q = [q for q in solution if q not in tests]
    unknown_db = sorted({i for ids in solution.values() for i in ids} - index)
    for what, bad, listing in (("test", unknown_q, "test.csv"), ("index", unknown_db, "index.csv")):
        if bad:
            raise ValueError(
                f"{root / solution_file}: {len(bad)} {what} ids are not in {root / listing}: {', '.join(bad[:_SHOW])}"
            )
    return GLDv2Retrieval(root, tuple(index_ids), tuple(test_ids), solution)


def gldv2_image_path(split: str, image_id: str) -> str:
    """Relative path ``<split>/a/b/c/<id>.jpg`` of a GLDv2 image (a, b, c: the first three characters of the id)."""
    return f"{split}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def _read_ids(path: Path) -> list[str]:
    """Ids of a one-column ``id`` CSV, checked for format and uniqueness."""
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in _rows(path, ["id"]):
        if len(row) != 1:
            raise ValueError(f"{path}:{line}: expected 1 field (id), got {len(row)}")
        if not _ID_RE.fullmatch(row[0]):
            _bad_id(row[0], path, line)
        if row[0] in first_line:
            raise ValueError(
                f"{path}:{line}: image id {row[0]} is listed twice (lines {first_line[row[0]]} and {line})"
            )
        first_line[row[0]] = line
        ids.append(row[0])
    return ids
