"""The run record of an evaluation (:mod:`irlib.provenance`), from the ``metrics.json`` content an evaluation
writes; the results registry reads older ``metrics.json``-only folders through the same mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from irlib.eval.revisited import PROTOCOLS
from irlib.provenance import new_record

LEGACY_DISTRACTORS = {"1m": "r1m"}
"""Distractor labels of runs written before the R1M set had one name (``roxford5k+1m``)."""


def eval_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields of an evaluation's ``metrics.json`` content, apart from the id, time, git and versions."""
    settings = dict(metrics.get("settings", {}))
    seconds = settings.pop("seconds", None)
    for key in ("versions", "gnd_sha256", "weights_sha256", "state_dict_sha256"):
        settings.pop(key, None)
    if "benchmark" in metrics:
        settings["benchmark"] = metrics["benchmark"]
    name, _, suffix = str(metrics.get("dataset")).partition("+")
    distractors = LEGACY_DISTRACTORS.get(suffix, suffix) or "none"
    return {
        "params": {"method": metrics.get("method"), "backbone": metrics.get("backbone"), **settings},
        "metrics": metrics["metrics"] if "benchmark" in metrics else {p: metrics[p] for p in PROTOCOLS if p in metrics},
        "dataset": {"name": name, "distractors": distractors, "gnd_sha256": metrics["settings"].get("gnd_sha256")},
        "weights_sha256": metrics["settings"].get("weights_sha256"),
        "state_dict_sha256": metrics["settings"].get("state_dict_sha256"),
        "seconds": round(sum(seconds.values()), 3) if isinstance(seconds, Mapping) else seconds,
    }


def eval_record(metrics: Mapping[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """The run record of an evaluation from its ``metrics.json`` content (written by ``save_result``)."""
    return new_record("eval", out, **eval_fields(metrics))
