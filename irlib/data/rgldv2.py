"""RGLDv2-clean as CiDeR published it, and how a reconstruction compares.

CiDeR (Song et al., "On Train-Test Class Overlap and Detection for Image Retrieval", CVPR 2024) removed 18 GLDv2-clean
landmarks that overlap ROxf/RPar but did not release the list. :data:`CIDER_COUNTS` holds the counts they published;
:func:`rgldv2_report` sets a reconstructed exclusion (the reviewed candidates of :mod:`irlib.data.overlap` and
:mod:`irlib.data.landmark_names`, or bare landmark ids) beside them, row by row, and says which landmarks were found
by text, visually or both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from irlib.data.gldv2 import ImageIdTable, landmark_image_counts, read_rgldv2_file
from irlib.data.landmark_names import REVISITED_LANDMARKS, EvalLandmark, landmark_of_query
from irlib.data.overlap import OverlapCandidate

__all__ = ["CIDER_COUNTS", "CiderCounts", "CiderGroup", "RGLDv2Report", "rgldv2_report"]

TEXT_GROUP = "text"
_SOURCES = ("text", "visual", "both", "listed")


@dataclass(frozen=True)
class CiderGroup:
    """One row of CiDeR's removal table: the landmarks removed because of one evaluation set, or found by text.

    Attributes:
        name: ``"roxford5k"``, ``"rparis6k"`` or ``"text"``.
        removed_classes: GLDv2-clean landmark ids removed.
        removed_images: their images.
        queries: the evaluation set's queries (None for the text row).
        overlapping_queries: queries whose landmark is in GLDv2-clean.
    """

    name: str
    removed_classes: int
    removed_images: int
    queries: int | None = None
    overlapping_queries: int | None = None


@dataclass(frozen=True)
class CiderCounts:
    """CiDeR's published counts (CVPR 2024): GLDv2-clean before, RGLDv2-clean after, and the removal per group.

    Attributes:
        gldv2_clean: ``(classes, images)`` of GLDv2-clean.
        rgldv2_clean: ``(classes, images)`` of RGLDv2-clean.
        groups: the rows of the removal table.
        source: where the numbers are printed.
    """

    gldv2_clean: tuple[int, int]
    rgldv2_clean: tuple[int, int]
    groups: tuple[CiderGroup, ...]
    source: str

    @property
    def removed_classes(self) -> int:
        return sum(g.removed_classes for g in self.groups)

    @property
    def removed_images(self) -> int:
        return sum(g.removed_images for g in self.groups)

    def group(self, name: str) -> CiderGroup | None:
        return next((g for g in self.groups if g.name == name), None)


CIDER_COUNTS = CiderCounts(
    gldv2_clean=(81_313, 1_580_470),
    rgldv2_clean=(81_295, 1_578_905),
    groups=(
        CiderGroup("roxford5k", removed_classes=6, removed_images=315, queries=70, overlapping_queries=38),
        CiderGroup("rparis6k", removed_classes=11, removed_images=1_227, queries=70, overlapping_queries=36),
        CiderGroup(TEXT_GROUP, removed_classes=1, removed_images=23),
    ),
    source=(
        "dealicious-inc/RGLDv2-clean README.md, images/Table_01.png (= paper Table 2: queries, classes and images "
        "removed per evaluation set, text match: Hôtel des Invalides) and images/Table_02.png (= paper Table 3: "
        "GLDv2-clean 1,580,470 / 81,313, RGLDv2-clean 1,578,905 / 81,295); Song et al., CVPR 2024, arXiv "
        "2404.01524. The README prose swaps 36 and 38 (line 83) and says 17 classes (line 91); the tables are used."
    ),
)
"""CiDeR's published RGLDv2-clean counts (``datasets.md`` §5); totals 18 classes, 1,565 images."""


@dataclass(frozen=True, eq=False)
class RGLDv2Report:
    """A reconstructed RGLDv2-clean exclusion against CiDeR's counts.

    Attributes:
        rows: one row per compared count: ``field``, ``published``, ``reconstructed``, ``difference``
            (reconstructed - published), ``note``; counts are pandas ``Int64`` (``<NA>`` where CiDeR gives none).
        landmarks: one row per excluded landmark id: ``landmark_id``, ``images``, ``in_csv``, ``source`` (text,
            visual, both, or listed: a bare id without evidence), ``group`` (the evaluation set it overlaps, or
            ``text`` when only its name matched), ``query_landmark``, ``matched_landmark``, ``matched_name``,
            ``category``.
        complete: whether the input listing is the complete GLDv2-clean (then the totals compare too).
    """

    rows: pd.DataFrame
    landmarks: pd.DataFrame
    complete: bool

    @property
    def by_source(self) -> dict[str, list[int]]:
        """``{"text": ids, "visual": ids, "both": ids, "listed": ids}`` (found by text only, visually only, both,
        or given without evidence), ids ascending."""
        frame = self.landmarks
        return {s: sorted(frame.loc[frame["source"] == s, "landmark_id"].tolist()) for s in _SOURCES}

    def differences(self) -> pd.DataFrame:
        """The rows whose reconstructed count differs from the published one."""
        diff = self.rows["difference"]
        return self.rows[diff.notna() & (diff != 0)]


def rgldv2_report(
    clean: str | os.PathLike | Mapping[int, int],
    excluded: Sequence[OverlapCandidate] | Iterable[int] | str | os.PathLike,
    *,
    queries: Mapping[str, str | None] | None = None,
    groups: Mapping[int, str] | None = None,
    landmarks: Sequence[EvalLandmark] = REVISITED_LANDMARKS,
    published: CiderCounts = CIDER_COUNTS,
) -> RGLDv2Report:
    """Compare an exclusion with CiDeR's published RGLDv2-clean counts (CVPR 2024, Tables 2-3).

    ``clean``: GLDv2-clean as ``train_clean.csv`` (or its folder) or ``{landmark_id: images}``. ``excluded``: the
    accepted candidates (their evidence decides each landmark's group: the evaluation set of its visual match, or
    ``text`` when only its name matched, as CiDeR's table counts the Invalides), landmark ids, or an exclusion file
    of landmark ids. ``groups`` overrides or supplies a landmark's group (bare ids have none: ``unknown``).
    ``queries``: ``{query: test-landmark key}`` of the evaluation sets (:func:`irlib.data.landmark_names.
    query_landmarks`); with it the report counts the queries whose landmark the exclusion covers (CiDeR: 38 of 70
    ROxf, 36 of 70 RPar). The RGLDv2-clean totals are compared only when ``clean`` is the complete GLDv2-clean.
    """
    counts = dict(clean) if isinstance(clean, Mapping) else landmark_image_counts(clean)
    frame = _excluded_frame(excluded, counts, groups or {}, queries, landmarks)
    n_classes, n_images = len(counts), sum(counts.values())
    complete = (n_classes, n_images) == tuple(published.gldv2_clean)
    found = frame[frame["in_csv"]]
    removed_classes, removed_images = len(found), int(found["images"].sum())
    rows: list[tuple[str, int | None, int, str]] = [
        ("GLDv2-clean classes (input)", published.gldv2_clean[0], n_classes, ""),
        ("GLDv2-clean images (input)", published.gldv2_clean[1], n_images, ""),
        ("classes removed", published.removed_classes, removed_classes, ""),
        ("images removed", published.removed_images, removed_images, ""),
    ]
    names = [g.name for g in published.groups]
    names += sorted(set(found["group"]) - set(names))
    for name in names:
        g = published.group(name)
        part = found[found["group"] == name]
        note = "" if g is not None else "not a row of CiDeR's table"
        rows.append((f"classes removed: {name}", None if g is None else g.removed_classes, len(part), note))
        images = int(part["images"].sum())
        rows.append((f"images removed: {name}", None if g is None else g.removed_images, images, note))
    note = "" if complete else "the input is not the complete GLDv2-clean: compare the removed counts instead"
    rows.append(("RGLDv2-clean classes", published.rgldv2_clean[0], n_classes - removed_classes, note))
    rows.append(("RGLDv2-clean images", published.rgldv2_clean[1], n_images - removed_images, note))
    if queries is not None:
        rows += _query_rows(frame, queries, landmarks, published)
    missing = int((~frame["in_csv"]).sum())
    if missing:
        rows.append(("excluded ids not in the CSV", 0, missing, "ids the listing does not hold; nothing removed"))
    table = pd.DataFrame(rows, columns=["field", "published", "reconstructed", "note"])
    table["published"] = table["published"].astype("Int64")
    table["reconstructed"] = table["reconstructed"].astype("Int64")
    table.insert(3, "difference", table["reconstructed"] - table["published"])
    return RGLDv2Report(rows=table, landmarks=frame, complete=complete)


def _excluded_frame(
    excluded: Sequence[OverlapCandidate] | Iterable[int] | str | os.PathLike,
    counts: Mapping[int, int],
    groups: Mapping[int, str],
    queries: Mapping[str, str | None] | None,
    landmarks: Sequence[EvalLandmark],
) -> pd.DataFrame:
    """One row per excluded landmark with its evidence and group."""
    if isinstance(excluded, (str, os.PathLike)):
        read = read_rgldv2_file(excluded)
        if isinstance(read, ImageIdTable):
            raise ValueError(
                f"{excluded}: an image-id table; the report compares landmark ids (use irlib.data.gldv2.gldv2_counts "
                "for an image table's totals)"
            )
        excluded = read
    dataset_of = {lm.key: lm.dataset for lm in landmarks}
    records: list[dict[str, Any]] = []
    seen: set[int] = set()
    for item in excluded:
        c = item if isinstance(item, OverlapCandidate) else None
        lid = int(c.landmark_id if c is not None else item)  # type: ignore[arg-type]
        if lid in seen:
            raise ValueError(f"landmark_id {lid} is excluded twice")
        seen.add(lid)
        query_key = None
        if c is not None and c.source != "text" and c.query:
            query_key = queries.get(c.query) if queries is not None and c.query in queries else None
            if query_key is None:
                lm = landmark_of_query(c.query, landmarks)
                query_key = lm.key if lm is not None else None
        if c is None:
            source, group = "listed", "unknown"
        elif c.source == "text":
            source, group = "text", TEXT_GROUP
        else:
            source = c.source
            group = dataset_of.get(query_key or "", _dataset_of_query(c.query))
            if group == "unknown" and c.matched_landmark in dataset_of:
                group = dataset_of[c.matched_landmark]
        records.append(
            {
                "landmark_id": lid,
                "images": int(counts.get(lid, 0)),
                "in_csv": lid in counts,
                "source": source,
                "group": groups.get(lid, group),
                "query_landmark": query_key,
                "matched_landmark": None if c is None else c.matched_landmark,
                "matched_name": None if c is None else c.matched_name,
                "category": None if c is None else c.category,
            }
        )
    columns = [
        "landmark_id",
        "images",
        "in_csv",
        "source",
        "group",
        "query_landmark",
        "matched_landmark",
        "matched_name",
        "category",
    ]
    frame = pd.DataFrame(records, columns=columns)
    frame["in_csv"] = frame["in_csv"].astype(bool)
    return frame.sort_values(["group", "landmark_id"], ignore_index=True)


def _dataset_of_query(query: str) -> str:
    """The evaluation set of a query whose name carries no landmark key (``oxford_*``, ``paris_general_*``)."""
    if query.startswith("oxford_"):
        return "roxford5k"
    if query.startswith("paris_"):
        return "rparis6k"
    return "unknown"


def _query_rows(
    frame: pd.DataFrame,
    queries: Mapping[str, str | None],
    landmarks: Sequence[EvalLandmark],
    published: CiderCounts,
) -> list[tuple[str, int | None, int, str]]:
    """Per evaluation set: its queries, and those whose test landmark some excluded landmark overlaps."""
    dataset_of = {lm.key: lm.dataset for lm in landmarks}
    found = frame[frame["in_csv"]]
    covered = set(found["query_landmark"].dropna()) | set(found["matched_landmark"].dropna())
    per_set: dict[str, list[int]] = {}
    for query, key in queries.items():
        name = dataset_of.get(key or "", _dataset_of_query(query))
        tally = per_set.setdefault(name, [0, 0])
        tally[0] += 1
        tally[1] += key in covered
    rows = []
    order = [g.name for g in published.groups]
    for name in sorted(per_set, key=lambda n: (order.index(n) if n in order else len(order), n)):
        g = published.group(name)
        total, hit = per_set[name]
        rows.append((f"queries: {name}", None if g is None else g.queries, total, ""))
        overlapping = None if g is None else g.overlapping_queries
        rows.append((f"queries whose landmark overlaps: {name}", overlapping, hit, ""))
    return rows
