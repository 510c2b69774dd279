"""Published mAPs at citation level (``published_results.csv``, package data): who reported which number for which
method, in which setting, and how the number came about; the papers and READMEs cited (``papers.csv``).

A row is one number as printed in one source. ``method_paper`` is the paper that proposed the method and
``reported_in`` the paper, README or issue where the number appears (keys of :func:`papers`); ``kind`` says how it got
there as far as the source says: ``original`` (by the method's authors: its paper or official repository),
``re-run`` (the reporting source retrained or re-evaluated it), ``copied`` (the source says it took the number from
another), ``unstated`` (the source does not say; :mod:`irlib.results.audit` decides by comparing numbers), ``recalled``
(our value comes from memory of the source, not read), ``derived`` (computed by us from other numbers, e.g. an
abstract's "+3.7 over X") and ``not_found`` (the source's table could not be read: no number, never a guess). The
setting fields (:data:`SETTING_FIELDS`) are what the source states for the row, empty where it does not.

Files in the first format (the ten columns of :data:`LEGACY_COLUMNS`) still load: ``reported_in`` becomes the
source text, ``kind`` ``recalled``/``derived`` from the confidence or else ``unstated``, the rest empty.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

PROTOCOLS = ("easy", "medium", "hard")
DISTRACTORS = ("none", "r1m")
CONFIDENCE = ("verified", "recalled", "derived")
KINDS = ("original", "re-run", "copied", "unstated", "recalled", "derived", "not_found")
_CELL = ("dataset", "protocol", "distractors", "map", "source", "confidence", "note")
LEGACY_COLUMNS = ("method", "backbone", "train_set", *_CELL)
"""The columns of the first format (still loaded, :func:`published_results`)."""
_STATED = ("image_size", "scales", "query_crop", "whitening", "reranking")
COLUMNS = ("method", "method_paper", "reported_in", "kind", "backbone", "train_set", *_STATED, *_CELL)
SETTING_FIELDS = ("backbone", "train_set", *_STATED, "distractors")
"""What a row states of how its number was obtained; two rows of one method differing here are different settings."""

_CATEGORIES = (("protocol", PROTOCOLS), ("distractors", DISTRACTORS), ("confidence", CONFIDENCE), ("kind", KINDS))
PAPER_COLUMNS = ("key", "kind", "title", "venue", "year", "url")
PAPER_KINDS = ("paper", "readme", "issue", "run")


def published_results(path: str | os.PathLike | None = None, *, include_not_found: bool = False) -> pd.DataFrame:
    """The published numbers of ``path`` (default: the shipped ``published_results.csv``), one row per number.

    Columns: :data:`COLUMNS` plus ``decimals`` (the digits after the point as printed, which bounds what "equal"
    means in the audit). ``map`` is percent (float, NaN for ``not_found`` rows, which are left out unless
    ``include_not_found``; their dataset, protocol, distractors and confidence may be empty: a table not read);
    ``protocol``, ``distractors``, ``confidence`` and ``kind`` are pandas categoricals; the other columns strings
    (empty when unknown). A file with the ten columns of :data:`LEGACY_COLUMNS` is migrated
    (module docstring). Bad values raise ``ValueError`` naming the file, the line and the field.
    """
    name = "published_results.csv" if path is None else os.fspath(path)
    if path is None:
        with resources.files(__package__).joinpath("published_results.csv").open(encoding="utf-8") as f:
            table = pd.read_csv(f, dtype=str, keep_default_na=False)
    else:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    if tuple(table.columns) == LEGACY_COLUMNS:
        table = _migrate(table)
    elif tuple(table.columns) != COLUMNS:
        raise ValueError(f"{name}: columns {list(table.columns)}, expected {list(COLUMNS)} (or {list(LEGACY_COLUMNS)})")
    table = _validate(table, name)
    return table if include_not_found else table[table["kind"] != "not_found"].reset_index(drop=True)


def _migrate(table: pd.DataFrame) -> pd.DataFrame:
    """A first-format table in the current columns (module docstring)."""
    kind = np.where(table["confidence"].isin(["recalled", "derived"]), table["confidence"], "unstated")
    out = table.assign(method_paper="", reported_in=table["source"], kind=kind)
    return out.assign(**{c: "" for c in COLUMNS if c not in out.columns})[list(COLUMNS)]


def _validate(table: pd.DataFrame, name: str) -> pd.DataFrame:
    def fail(rows: pd.Series, field: str, expected: str) -> None:
        first = int(np.flatnonzero(rows.to_numpy())[0])
        value = table[field].iloc[first]
        raise ValueError(f"{name} line {first + 2}: field {field} is {value!r}, expected {expected}")

    not_found = table["kind"] == "not_found"
    for column, allowed in _CATEGORIES:
        bad = ~table[column].isin(allowed) & ~(not_found & (table[column] == "") & (column != "kind"))
        if bad.any():
            fail(bad, column, f"one of {list(allowed)}")
    for column in ("method", "source", "dataset"):
        empty = (table[column] == "") & ~(not_found & (column == "dataset"))
        if empty.any():
            fail(empty, column, "a non-empty value")
    if (not_found & (table["map"] != "")).any():
        fail(not_found & (table["map"] != ""), "map", "empty for a not_found row")
    values = pd.to_numeric(table["map"].where(~not_found), errors="coerce")
    if (values.isna() & ~not_found).any() or not values[~not_found].between(0, 100).all():
        fail(~not_found & ~values.between(0, 100), "map", "a number in [0, 100]")
    decimals = [len(v.partition(".")[2]) for v in table["map"]]
    table = table.assign(map=values.astype(float), decimals=decimals)
    for column, allowed in _CATEGORIES:
        table[column] = pd.Categorical(table[column].replace("", None), categories=allowed)
    return table


def papers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The sources cited by ``reported_in`` / ``method_paper`` (default: the shipped ``papers.csv``): ``key``,
    ``kind`` (paper, readme, issue, run), ``title``, ``venue``, ``year`` (int: when the source reported; orders the
    audit's graph), ``url``; indexed by ``key``."""
    name = "papers.csv" if path is None else os.fspath(path)
    source = resources.files(__package__).joinpath("papers.csv") if path is None else Path(path)
    with source.open(encoding="utf-8") as f:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
    if tuple(table.columns) != PAPER_COLUMNS:
        raise ValueError(f"{name}: columns {list(table.columns)}, expected {list(PAPER_COLUMNS)}")
    bad_kind = ~table["kind"].isin(PAPER_KINDS)
    bad_year = ~table["year"].str.fullmatch(r"(19|20)\d\d")
    for bad, field, expected in ((bad_kind, "kind", f"one of {list(PAPER_KINDS)}"), (bad_year, "year", "a year")):
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{name} line {line + 2}: field {field} is {table[field].iloc[line]!r}, expected {expected}"
            )
    if table["key"].duplicated().any():
        raise ValueError(f"{name}: duplicate keys {sorted(set(table['key'][table['key'].duplicated()]))}")
    return table.assign(year=table["year"].astype(int)).set_index("key")
