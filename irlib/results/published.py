"""The published mAPs of ``published_results.csv`` (package data), with their source and confidence."""

from __future__ import annotations

from importlib import resources

import pandas as pd

PROTOCOLS = ("easy", "medium", "hard")
DISTRACTORS = ("none", "r1m")
CONFIDENCE = ("verified", "recalled", "derived")
COLUMNS = (
    "method",
    "backbone",
    "train_set",
    "dataset",
    "protocol",
    "distractors",
    "map",
    "source",
    "confidence",
    "note",
)


def published_results() -> pd.DataFrame:
    """One row per published number: ``method``, ``backbone``, ``train_set``, ``dataset`` (``roxford5k`` ...),
    ``protocol`` (easy/medium/hard), ``distractors`` (none/r1m), ``map`` (percent, float), ``source``, ``confidence``
    (verified: read from the source; recalled: from memory of the paper; derived: computed from other numbers) and
    ``note`` (empty string when none). Categorical columns are pandas categoricals; bad values raise ``ValueError``.
    """
    with resources.files(__package__).joinpath("published_results.csv").open() as f:
        table = pd.read_csv(f, dtype={c: str for c in COLUMNS if c != "map"}, keep_default_na=False)
    if tuple(table.columns) != COLUMNS:
        raise ValueError(f"published_results.csv has columns {list(table.columns)}, expected {list(COLUMNS)}")
    table["map"] = pd.to_numeric(table["map"], errors="raise").astype(float)
    for column, allowed in (("protocol", PROTOCOLS), ("distractors", DISTRACTORS), ("confidence", CONFIDENCE)):
        bad = sorted(set(table[column]) - set(allowed))
        if bad:
            raise ValueError(f"published_results.csv: {column} has {bad}, allowed {list(allowed)}")
        table[column] = pd.Categorical(table[column], categories=allowed)
    if not table["map"].between(0, 100).all() or (table["source"] == "").any():
        raise ValueError("published_results.csv: every row needs a map in [0, 100] and a source")
    return table
