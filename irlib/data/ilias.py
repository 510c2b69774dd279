"""ILIAS core set: instances, image and text queries, positives (``datasets.md`` §7; ilias-vrg/ilias, MIT).

Layout (``download/README.md``): ``<root>/<instance>/query/QNNN_yy.jpg`` with ``QNNN_yy_bbox.txt``, text queries
``<root>/<instance>/query/TNNN.txt``, positives ``<root>/<instance>/pos/PNNN_zz.jpg`` with ``PNNN_zz_bbox.txt``;
``*_url.txt`` files are ignored. ``root`` is ``ilias_core`` itself or a folder holding it.

An image id is its path relative to ``root`` (``<instance>/query/Q000_00.jpg``), as in the official id files, and
the instance of an id is ``id.split('/')[0]``. Bbox files hold one or more lines ``x_topleft y_topleft width height``
in pixels (xywh); they are returned as ``(n, 4)`` float arrays of **x1 y1 x2 y2** with ``x2 = x + w`` and
``y2 = y + h`` (no -1), the order of revisitop boxes. Every image query needs a bbox file; a positive may lack one
(then its boxes are ``(0, 4)``). The database is the positives followed by the distractors; queries are never in it.

Distractors are YFCC100M images in webdataset tar shards (``<ilias>/yfcc100m/*.tar``, ``download_ilias.sh``), read in
place as :class:`~irlib.data.images.TarMember` references. A member's webdataset key is its name up to the first dot
of its file name (webdataset ``tariterators.base_plus_ext``) and its distractor id is ``<shard file name>/<key>``, the
shard name *with* its ``.tar``: ``generators.py:44-52`` joins ``os.path.basename`` of the shard path and the key.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from irlib.data.images import ImageRef, TarMember
from irlib.io import write_json

__all__ = [
    "DISTRACTOR_DIR",
    "MINI_ILIAS_IDS",
    "IliasDataset",
    "IliasIdFiles",
    "IliasImage",
    "IliasTextQuery",
    "index_shards",
    "read_bbox_file",
    "read_id_files",
    "select_distractors",
    "shard_members",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TEXT_RE = re.compile(r"T\d+\.txt")

DISTRACTOR_DIR = "yfcc100m"
"""Folder of the YFCC100M shards beside ``ilias_core`` (``download/download_ilias.sh:57-59``)."""
MINI_ILIAS_IDS = "mini_ilias_yfcc100m_ids.txt"
"""The mini-ILIAS distractor list in ``image_ids/`` (``feature_extraction/README.md``, mini-ILIAS)."""
SHARD_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
INDEX_DIR = ".irlib-index"
_INDEX_FORMAT = 1
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset tariterators.base_plus_ext
_META_RE = re.compile(r"__[^/]*__($|/)")  # webdataset tar_file_iterator skip_meta


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
    """The ILIAS core set read by :meth:`from_dir`, with distractors when asked: ``distractor_ids`` (empty unless a
    list or shards were given) and, when read from shards, their images ``distractors`` (one per id)."""

    root: Path
    instances: tuple[str, ...]
    image_queries: tuple[IliasImage, ...]
    text_queries: tuple[IliasTextQuery, ...]
    positives: tuple[IliasImage, ...]
    distractor_ids: tuple[str, ...] = ()
    id_files: IliasIdFiles | None = None
    distractors: tuple[TarMember, ...] = ()

    @classmethod
    def from_dir(
        cls,
        root: str | os.PathLike,
        distractor_ids: str | os.PathLike | None = None,
        id_dir: str | os.PathLike | None = None,
        *,
        distractor_shards: str | os.PathLike | None = None,
        index_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> IliasDataset:
        """Scan ``root`` (instances sorted by name, files by name), and the distractors if asked.

        ``distractor_ids``: an id list, one id per line (CSV: column 0), plain or gzipped (``distractor_ids.txt.gz``,
        ids ``<shard>.tar/<key>``; ``mini_ilias_yfcc100m_ids.txt``). Alone, only the ids are kept (for descriptors
        extracted elsewhere). ``distractor_shards``: a folder of webdataset shards (``<ilias>/yfcc100m``), indexed
        by :func:`index_shards` (``index_dir``: where its per-shard index lives); the distractors are its images in
        shard order, or those of ``distractor_ids`` in list order (see :func:`select_distractors`).

        ``id_dir``: the official ``image_ids/`` folder; its query and positive lists must name exactly the files
        found on disk (see :func:`read_id_files`), and the positives' scale and clutter are kept in ``id_files``.

        Raises FileNotFoundError for a missing folder or query bbox file and ValueError, naming the file, for a
        malformed bbox or text file, an unexpected file, a bbox file without its image, an instance without image
        query or positive, a distractor id listed twice or equal to a core image id, and a listed id that is in no
        shard.
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
        members: tuple[TarMember, ...] = ()
        if distractor_shards is not None:
            index = index_shards(distractor_shards, index_dir=index_dir, progress=progress)
            if distractor_ids is None:
                distractors, members = tuple(index), tuple(index.values())
            else:
                distractors, members = select_distractors(index, distractor_ids)
        elif distractor_ids is not None:
            distractors = _read_distractors(Path(distractor_ids), queries + positives)
        else:
            distractors = ()
        ids = None
        if id_dir is not None:
            ids = read_id_files(id_dir)
            _cross_check(ids, queries, texts, positives, root)
        return cls(
            root,
            instances,
            tuple(queries),
            tuple(texts),
            tuple(positives),
            distractor_ids=distractors,
            id_files=ids,
            distractors=members,
        )

    def positives_of(self, instance: str) -> list[str]:
        """Ids of the positives of ``instance`` (its ground truth)."""
        return [p.id for p in self.positives if p.instance == instance]

    def database_ids(self) -> list[str]:
        """The database: positive ids, then distractor ids."""
        return [p.id for p in self.positives] + list(self.distractor_ids)

    def database_images(self) -> list[ImageRef]:
        """The images of :meth:`database_ids`: positive files, then distractor tar members. Raises ValueError when
        the distractors are ids only (read from a list without ``distractor_shards``)."""
        if len(self.distractors) != len(self.distractor_ids):
            raise ValueError(
                f"{len(self.distractor_ids)} distractor ids have no images: they were read from a list alone; "
                "pass distractor_shards=<the folder of the YFCC100M .tar shards> to read their images"
            )
        return [self.path(p.id) for p in self.positives] + list(self.distractors)

    def ground_truth(self, queries: Iterable[IliasImage | IliasTextQuery]) -> list[list[int]]:
        """For each query, the indices in :meth:`database_ids` of its instance's positives (for ``ilias_map_at_k``)."""
        by_instance: dict[str, list[int]] = {}
        for i, p in enumerate(self.positives):
            by_instance.setdefault(p.instance, []).append(i)
        return [by_instance[q.instance] for q in queries]

    def path(self, image_id: str) -> Path:
        """File of a core image id."""
        return self.root / image_id


@dataclass(frozen=True)
class IliasIdFiles:
    """The official id lists (``image_ids/``): query and positive ids, and each positive's ``(scale, clutter)``."""

    image_query_ids: tuple[str, ...]
    text_query_ids: tuple[str, ...]
    positive_info: dict[str, tuple[float, int]]


def read_id_files(id_dir: str | os.PathLike) -> IliasIdFiles:
    """Read ``image_query_ids.txt`` (CSV, id in column 0), ``text_query_ids.txt`` (one id per line) and
    ``positive_ids.txt`` (CSV ``id,scale,clutter``) from ``id_dir``, as ilias ``evaluation/src/dataset.py`` does
    (no header). Malformed rows and repeated ids raise ValueError naming the file and line."""
    id_dir = Path(id_dir)
    queries = [row[0] for _, row in _id_rows(id_dir / "image_query_ids.txt", min_fields=1)]
    texts = [row[0] for _, row in _id_rows(id_dir / "text_query_ids.txt", min_fields=1, max_fields=1)]
    info: dict[str, tuple[float, int]] = {}
    path = id_dir / "positive_ids.txt"
    for line_no, (image_id, scale, clutter) in _id_rows(path, min_fields=3, max_fields=3):
        try:
            info[image_id] = (float(scale), int(clutter))
        except ValueError:
            raise ValueError(f"{path}:{line_no}: expected 'id,scale,clutter' with a number and an integer") from None
    return IliasIdFiles(tuple(queries), tuple(texts), info)


def _id_rows(path: Path, *, min_fields: int, max_fields: int | None = None) -> Iterable[tuple[int, list[str]]]:
    """Non-blank CSV rows of an id file (gzipped when named ``*.gz``) with their line numbers; checks the field count
    and unique ids."""
    if not path.is_file():
        raise FileNotFoundError(f"ILIAS id file {path} is missing")
    first_line: dict[str, int] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = [v.strip() for v in line.rstrip("\n").split(",")]
            if len(row) < min_fields or (max_fields is not None and len(row) > max_fields) or not row[0]:
                want = f"{min_fields}" if max_fields == min_fields else f"at least {min_fields}"
                raise ValueError(f"{path}:{line_no}: expected {want} comma-separated fields, got {line.strip()!r}")
            if row[0] in first_line:
                first = first_line[row[0]]
                raise ValueError(f"{path}:{line_no}: {row[0]!r} is listed twice (lines {first} and {line_no})")
            first_line[row[0]] = line_no
            yield line_no, row


def _cross_check(
    ids: IliasIdFiles,
    queries: list[IliasImage],
    texts: list[IliasTextQuery],
    positives: list[IliasImage],
    root: Path,
) -> None:
    """The id lists and the scanned files must agree; text ids match with or without their ``.txt``."""

    def stem(i: str) -> str:
        return i.removesuffix(".txt")

    for what, listed, found in (
        ("image_query_ids.txt", set(ids.image_query_ids), {q.id for q in queries}),
        ("text_query_ids.txt", {stem(t) for t in ids.text_query_ids}, {stem(t.id) for t in texts}),
        ("positive_ids.txt", set(ids.positive_info), {p.id for p in positives}),
    ):
        if missing := sorted(listed - found):
            raise ValueError(f"{what}: {len(missing)} listed ids have no file under {root}: {_shown(missing)}")
        if extra := sorted(found - listed):
            raise ValueError(f"{len(extra)} files under {root} are not listed in {what}: {_shown(extra)}")


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


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
    """Distractor ids, one per line (plain or gzipped), checked for duplicates and overlap with the core images."""
    core_ids = {c.id for c in core}
    ids = []
    for line_no, (image_id,) in _id_rows(path, min_fields=1, max_fields=1):
        if image_id in core_ids:
            raise ValueError(f"{path}:{line_no}: {image_id!r} is a core image, not a distractor")
        ids.append(image_id)
    return tuple(ids)


def shard_members(shard: str | os.PathLike) -> list[tuple[str, TarMember]]:
    """``(webdataset key, image member)`` of every image of one uncompressed tar shard, in tar order, read from the
    tar headers only (webdataset's rules: regular files, ``__meta__`` names skipped, the key is the name up to the
    first dot of its file name, the suffix after it is lower-cased; images are ``.jpg .jpeg .png .webp``, where the
    official pipeline keeps ``.jpg`` only, ``generators.py:26-31``: the ILIAS shards hold nothing else).

    Raises ValueError naming the shard for a file that is not a tar, a corrupt header, a truncated shard, and a key
    with two images (webdataset refuses a repeated file name in a sample).
    """
    shard = Path(shard)
    file_size = shard.stat().st_size
    members: list[tuple[str, TarMember]] = []
    seen: dict[str, str] = {}
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                match = _KEY_RE.match(info.name)
                if not info.isreg() or _META_RE.match(info.name) or not match:
                    continue
                key, suffix = match.group(1), match.group(2).lower()
                if suffix not in SHARD_IMAGE_SUFFIXES:
                    continue
                if key in seen:
                    raise ValueError(f"tar shard {shard}: key {key!r} has two images, {seen[key]!r} and {info.name!r}")
                if info.offset_data + info.size > file_size:
                    raise ValueError(f"tar shard {shard} is truncated: member {info.name!r} ends after the file")
                seen[key] = info.name
                members.append((key, TarMember(shard, info.name, info.offset_data, info.size)))
            end = tar.offset  # where the header walk stopped: only zero padding may follow
    except (tarfile.TarError, EOFError) as err:
        raise ValueError(f"tar shard {shard} is corrupt or not an uncompressed tar file: {err}") from err
    with open(shard, "rb") as f:
        f.seek(end)
        while block := f.read(1 << 20):
            if block.count(0) != len(block):
                raise ValueError(f"tar shard {shard} is corrupt: an invalid tar header at byte {end}")
    return members


def index_shards(
    folder: str | os.PathLike, *, index_dir: str | os.PathLike | None = None, progress: bool = True
) -> dict[str, TarMember]:
    """Distractor id (``<shard>.tar/<key>``) -> image member of every ``folder/*.tar``, shards sorted by name (as
    ilias ``extract.py:135``), members in tar order.

    Each shard's headers are read once: its index is kept as ``<index_dir>/<shard>.json`` (default
    ``folder/.irlib-index``), written atomically and used while the shard's size and modification time are
    unchanged. An index folder that cannot be written only warns. Raises FileNotFoundError for a folder without
    shards and ValueError as :func:`shard_members`.
    """
    folder = Path(folder)
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no webdataset shard (*.tar) in {folder}")
    index_dir = folder / INDEX_DIR if index_dir is None else Path(index_dir)
    index: dict[str, TarMember] = {}
    writable = True
    for shard in tqdm(shards, desc="index shards", unit="shard", disable=not progress):
        members = _cached_members(shard, index_dir / f"{shard.name}.json")
        if members is None:
            members = shard_members(shard)
            writable = writable and _save_members(shard, members, index_dir / f"{shard.name}.json")
        index.update((f"{shard.name}/{key}", member) for key, member in members)
    return index


def _shard_state(shard: Path) -> dict[str, int]:
    st = shard.stat()
    return {"format": _INDEX_FORMAT, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached_members(shard: Path, path: Path) -> list[tuple[str, TarMember]] | None:
    """The members recorded in ``path`` if it describes ``shard`` as it is now, else None."""
    try:
        record = json.loads(path.read_text())
        if {k: record.get(k) for k in ("format", "size", "mtime_ns")} != _shard_state(shard):
            return None
        rows = zip(record["names"], record["offsets"], record["sizes"], strict=True)
        return [(_KEY_RE.match(n).group(1), TarMember(shard, n, o, z)) for n, o, z in rows]  # type: ignore[union-attr]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save_members(shard: Path, members: list[tuple[str, TarMember]], path: Path) -> bool:
    """Record a shard's members; False (with a warning) when the index folder cannot be written."""
    record = _shard_state(shard) | {
        "names": [m.name for _, m in members],
        "offsets": [m.offset for _, m in members],
        "sizes": [m.size for _, m in members],
    }
    try:
        write_json(path, record)
    except OSError as err:
        warnings.warn(f"cannot write the shard index {path} ({err}); shards are scanned again next time", stacklevel=3)
        return False
    return True


def select_distractors(
    index: Mapping[str, TarMember], ids_file: str | os.PathLike
) -> tuple[tuple[str, ...], tuple[TarMember, ...]]:
    """The ids and members of the images listed in ``ids_file``, in list order.

    The list has one id per line (CSV: column 0, as ilias ``utils.load_image_ids``), plain or gzipped. An entry is a
    distractor id ``<shard>.tar/<key>`` or a bare webdataset key: the official extraction matches ``--selected_ids``
    (e.g. the mini-ILIAS list) against the key alone (``generators.py:34-41``), so a key names the one shard image
    that has it. Raises ValueError naming the list for ids in no shard (the first few shown), a key found in two
    shards, and an image listed twice.
    """
    ids_file = Path(ids_file)
    by_key: dict[str, list[str]] | None = None
    chosen: dict[str, int] = {}
    missing: list[str] = []
    for line_no, row in _id_rows(ids_file, min_fields=1):
        entry = row[0]
        image_id = entry if entry in index else None
        if image_id is None:
            if by_key is None:
                by_key = {}
                for i in index:
                    by_key.setdefault(i.split("/", 1)[1], []).append(i)
            found = by_key.get(entry, [])
            if len(found) > 1:
                raise ValueError(f"{ids_file}:{line_no}: key {entry!r} is in several shards: {_shown(found)}")
            image_id = found[0] if found else None
        if image_id is None:
            missing.append(entry)
        elif image_id in chosen:
            raise ValueError(
                f"{ids_file}:{line_no}: {entry!r} names {image_id}, listed before on line {chosen[image_id]}"
            )
        else:
            chosen[image_id] = line_no
    if missing:
        folders = ", ".join(sorted({str(m.shard.parent) for m in index.values()}))
        raise ValueError(
            f"{ids_file}: {len(missing)} listed ids are in none of the shards under {folders}: {_shown(missing)}"
        )
    return tuple(chosen), tuple(index[i] for i in chosen)
