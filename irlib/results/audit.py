"""The literature audit: which source re-ran a method and which copied its numbers.

For every method (its paper and backbone), dataset, protocol and distractor setting, the numbers reported across
sources (:func:`irlib.results.published.published_results`, irlib's own runs joined by :func:`runs_as_reported`) are
compared with the method's original: the numbers its authors reported (kind ``original``, or a number of the method's
own paper that we only recalled or derived). A reported number

- equal to an original *to the precision printed* (the original rounded to the fewer of the two decimals) is
  ``copied`` (from that original), or from an earlier non-original source that printed the same number (a chain);
- different from every original is a ``different setting`` when a setting field both rows state differs
  (:data:`irlib.results.published.SETTING_FIELDS`, the fields listed), else a ``re-run`` when the source says it
  re-ran the method, else ``differs`` (a re-run, or a copy of a source not recorded: the source does not say);
- with no original to compare is ``no original``; one whose value we recalled or derived is ``unverifiable``; one
  whose table could not be read is ``not found``.

The stated kind is kept beside the verdict, so a source that says it re-ran a method and prints the original's
numbers (or says it copied and prints other numbers) stands out in ``flag``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from irlib.results.published import COLUMNS, SETTING_FIELDS, papers
from irlib.results.table import run_label

VERDICTS = (
    "original",
    "copied",
    "re-run",
    "different setting",
    "differs",
    "no original",
    "unverifiable",
    "not found",
)
"""The audit's verdicts, in the order its tables and figures list them."""
GROUP = ("method_paper", "backbone_key", "dataset", "protocol", "distractors")
"""What identifies one reported quantity: the method (its paper and backbone) and the cell."""
METHOD_PAPERS: dict[str, str] = {
    "gem": "gem-tpami2018",
    "delg": "delg-eccv2020",
    "dolg": "dolg-iccv2021",
    "cvnet": "cvnet-cvpr2022",
    "superglobal": "superglobal-iccv2023",
    "senet": "senet-cvpr2023",
    "spca": "spca-iccv2023",
    "cfcd": "cfcd-iccv2023",
    "ultron": "ultron-accv2024",
}
"""irlib method name -> the key of the paper that proposed it (:func:`irlib.results.published.papers`)."""
_REVISITED = ("easy", "medium", "hard")
_OWN = ("original", "recalled", "derived")  # kinds a method's own source can have


def backbone_key(backbone: str) -> str:
    """A backbone name comparable across sources: ``resnet101``, ``R101``, ``ResNet-101`` -> ``R101``; others
    lower-cased without spaces."""
    text = str(backbone)
    depth = re.fullmatch(r"(?:r|resnet)[-_ ]?(\d+)", text.strip().lower())
    return f"R{depth.group(1)}" if depth else re.sub(r"\s+", "", text.lower())


def runs_as_reported(
    runs: pd.DataFrame, *, train_set: str = "", labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """irlib's evaluation runs (:func:`irlib.results.load_runs`) as rows of the published table, reported in
    ``run:<id>`` (kind ``re-run``, 2 decimals), so that they join the audit as one more source.

    The method paper comes from :data:`METHOD_PAPERS` (runs of other methods are left out: they reproduce no
    published method); ``labels`` (run id -> label) names the rows as the comparison table does, else
    :func:`irlib.results.table.run_label`.
    """
    rows = []
    for _, run in runs.iterrows():
        paper = METHOD_PAPERS.get(str(run.get("method")))
        if paper is None or run.get("dataset") not in ("roxford5k", "rparis6k"):
            continue
        rerank = run.get("rerank")
        for protocol in _REVISITED:
            value = run.get(f"{protocol}.map")
            if value is None or pd.isna(value):
                continue
            rows.append(
                dict.fromkeys(COLUMNS, "")
                | {
                    "method": (labels or {}).get(run["id"], run_label(run)),
                    "method_paper": paper,
                    "reported_in": f"run:{run['id']}",
                    "kind": "re-run",
                    "backbone": str(run.get("backbone") or ""),
                    "train_set": train_set,
                    "reranking": rerank if isinstance(rerank, str) and rerank else "none",
                    "dataset": run["dataset"],
                    "protocol": protocol,
                    "distractors": run["distractors"] if isinstance(run.get("distractors"), str) else "none",
                    "map": round(float(value), 2),
                    "decimals": 2,
                    "source": f"irlib run {run['id']} ({run['path']})",
                    "confidence": "verified",
                }
            )
    return pd.DataFrame(rows, columns=[*COLUMNS, "decimals"])


def run_papers(runs: pd.DataFrame) -> pd.DataFrame:
    """The ``run:<id>`` sources of :func:`runs_as_reported` in the form of :func:`irlib.results.published.papers`."""
    created = pd.to_datetime(runs["created"], utc=True)
    return pd.DataFrame(
        {
            "kind": "run",
            "title": [f"irlib run {i}: {run_label(r)}" for i, (_, r) in zip(runs["id"], runs.iterrows(), strict=True)],
            "venue": "irlib",
            "year": [int(c.year) if pd.notna(c) else 0 for c in created],
            "url": runs["path"].astype(str).to_numpy(),
        },
        index=pd.Index([f"run:{i}" for i in runs["id"]], name="key"),
    )


def _equal(a: float, a_decimals: int, b: float, b_decimals: int) -> bool:
    """Whether two printed numbers agree to the coarser of their precisions."""
    d = min(int(a_decimals), int(b_decimals))
    return bool(abs(round(a, d) - round(b, d)) < 0.5 * 10.0**-d - 1e-9)


def _setting_diff(row: pd.Series, ref: pd.Series) -> list[str]:
    """``field: row vs reference`` for each setting field both state and that differs."""
    out = []
    for field in SETTING_FIELDS:
        a, b = str(row[field]), str(ref[field])
        if a and b and (backbone_key(a) != backbone_key(b) if field == "backbone" else a.lower() != b.lower()):
            out.append(f"{field}: {a} vs {b}")
    return out


def audit(published: pd.DataFrame, sources: pd.DataFrame | None = None) -> pd.DataFrame:
    """The audit of ``published`` (:func:`~irlib.results.published.published_results` with ``include_not_found``,
    optionally concatenated with :func:`runs_as_reported`): one row per reported number with its verdict.

    ``sources``: :func:`~irlib.results.published.papers` (default: the shipped table; add :func:`run_papers` for
    runs), for the years that order copy chains.

    Returns:
        the rows of ``published`` (method, method_paper, reported_in, kind, backbone, setting fields, dataset,
        protocol, distractors, map, decimals, source, confidence) plus ``year`` (of the reporting source),
        ``verdict`` (:data:`VERDICTS`), ``reference`` (the source it was compared with or copied from),
        ``reference_map``, ``delta`` (map - reference_map), ``setting_diff`` (``"field: this vs reference; ..."``) and
        ``flag`` (a stated kind the numbers contradict).
    """
    sources = papers() if sources is None else sources
    table = published.copy()
    for column in ("kind", "protocol", "distractors", "confidence"):
        table[column] = table[column].astype(str)
    table["backbone_key"] = table["backbone"].map(backbone_key)
    table["year"] = table["reported_in"].map(sources["year"]).astype("Int64")
    verdicts = [_verdict(row, table) for _, row in table.iterrows()]
    out = pd.concat([table, pd.DataFrame(verdicts, index=table.index)], axis=1)
    order = pd.Categorical(out["verdict"], categories=VERDICTS)
    return out.assign(verdict=order).drop(columns="backbone_key")


def _verdict(row: pd.Series, table: pd.DataFrame) -> dict[str, Any]:
    """The verdict of one reported number (module docstring) against the rows of its group in ``table``."""
    empty = {"reference": "", "reference_map": np.nan, "delta": np.nan, "setting_diff": "", "flag": ""}
    kind = row["kind"]
    if kind == "not_found":
        return empty | {"verdict": "not found"}
    own = row["reported_in"] == row["method_paper"] or kind == "original"
    if kind == "original":
        return empty | {"verdict": "original"}
    if kind in ("recalled", "derived"):
        return empty | {"verdict": "unverifiable"}
    group = table[(table[list(GROUP)] == row[list(GROUP)]).all(axis=1) & (table.index != row.name)]
    group = group[group["kind"] != "not_found"]
    originals = group[group["kind"].isin(_OWN) & (group["reported_in"] == group["method_paper"])]
    originals = pd.concat([originals, group[group["kind"] == "original"]]).drop_duplicates()
    equal = [ref for _, ref in originals.iterrows() if _equal(row["map"], row["decimals"], ref["map"], ref["decimals"])]
    if not equal and pd.notna(row["year"]):
        earlier = group[~group["kind"].isin(_OWN) & (group["year"] < row["year"])]
        equal = [
            ref for _, ref in earlier.iterrows() if _equal(row["map"], row["decimals"], ref["map"], ref["decimals"])
        ]
    if equal:
        ref = min(equal, key=lambda r: len(_setting_diff(row, r)))
        flag = "stated re-run, but equals " + ref["reported_in"] if kind == "re-run" else ""
        return _compared(row, ref, "copied", flag)
    if originals.empty or own:
        return empty | {"verdict": "no original"}
    ref = min(
        (r for _, r in originals.iterrows()),
        key=lambda r: (len(_setting_diff(row, r)), abs(row["map"] - r["map"])),
    )
    verdict = "different setting" if _setting_diff(row, ref) else "re-run" if kind == "re-run" else "differs"
    flag = "stated copied, but differs" if kind == "copied" and verdict != "different setting" else ""
    return _compared(row, ref, verdict, flag)


def _compared(row: pd.Series, ref: pd.Series, verdict: str, flag: str) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "reference": ref["reported_in"],
        "reference_map": float(ref["map"]),
        "delta": round(float(row["map"]) - float(ref["map"]), 6),
        "setting_diff": "; ".join(_setting_diff(row, ref)),
        "flag": flag,
    }


def method_identity(audited: pd.DataFrame) -> pd.Series:
    """``method_paper (backbone)`` per row: what the audit compares numbers within."""
    return audited["method_paper"] + " (" + audited["backbone"].map(backbone_key) + ")"


def reported_spread(
    audited: pd.DataFrame, dataset: str = "roxford5k", protocol: str = "hard", distractors: str = "none"
) -> pd.DataFrame:
    """The audited numbers of one cell for the methods reported by more than one source, with their ``label``
    (:func:`method_identity`), sorted by label, year and source: what the spread figure draws."""
    rows = audited[
        (audited["dataset"] == dataset)
        & (audited["protocol"].astype(str) == protocol)
        & (audited["distractors"].astype(str) == distractors)
        & audited["map"].notna()
    ].assign(label=method_identity)
    shared = rows.groupby("label")["reported_in"].transform("nunique") > 1
    return rows[shared].sort_values(["label", "year", "reported_in"])


def copy_graph(audited: pd.DataFrame) -> pd.DataFrame:
    """Who took numbers from whom: one edge per (reporting source, source copied from) with ``numbers`` (how many
    copied numbers) and ``methods`` (the method papers, sorted)."""
    copied = audited[audited["verdict"] == "copied"]
    edges = copied.groupby(["reported_in", "reference"], sort=True).agg(
        numbers=("map", "size"), methods=("method_paper", lambda m: ", ".join(sorted(set(m))))
    )
    return edges.reset_index().rename(columns={"reported_in": "source", "reference": "target"})


def verdict_matrix(audited: pd.DataFrame) -> pd.DataFrame:
    """Reporting source x method paper: the most frequent verdict of that source's numbers for that method (ties:
    :data:`VERDICTS` order); empty where the source reports none."""
    verdicts = audited.assign(verdict=audited["verdict"].astype(str))
    counts = verdicts.groupby(["reported_in", "method_paper", "verdict"]).size().rename("n").reset_index()
    counts["rank"] = counts["verdict"].map({v: i for i, v in enumerate(VERDICTS)})
    best = counts.sort_values(["n", "rank"], ascending=[False, True]).drop_duplicates(["reported_in", "method_paper"])
    return best.pivot(index="reported_in", columns="method_paper", values="verdict").fillna("")


def copied_share(audited: pd.DataFrame) -> pd.DataFrame:
    """Per reporting source that reports other methods' numbers: ``numbers`` compared with an original (copied,
    re-run, different setting or differs), ``copied``, ``share`` (copied / numbers), sorted by share."""
    compared = audited[audited["verdict"].isin(["copied", "re-run", "different setting", "differs"])]
    out = compared.groupby("reported_in").agg(
        numbers=("verdict", "size"), copied=("verdict", lambda v: int((v == "copied").sum()))
    )
    out["share"] = out["copied"] / out["numbers"]
    return out.sort_values(["share", "numbers"], ascending=[False, False])


def audit_summary(audited: pd.DataFrame) -> pd.DataFrame:
    """Per method paper x reporting source: how many numbers, the verdict counts, the largest ``|delta|`` and the
    setting differences seen; the audit table to export."""
    rows = []
    for (paper, source), group in audited.groupby(["method_paper", "reported_in"], sort=True):
        counts = group["verdict"].value_counts()
        diffs = sorted({d for text in group["setting_diff"] for d in text.split("; ") if d})
        rows.append(
            {
                "method_paper": paper,
                "reported_in": source,
                "numbers": len(group),
                **{v: int(counts.get(v, 0)) for v in VERDICTS},
                "max_abs_delta": float(group["delta"].abs().max()) if group["delta"].notna().any() else np.nan,
                "setting_diff": "; ".join(diffs),
                "flags": len(group[group["flag"] != ""]),
            }
        )
    return pd.DataFrame(rows)
