"""The paper's comparison table: methods × dataset (± 1M) × protocol, every cell saying where its number comes from.

Papers in this field mix re-run and copied numbers without saying which; here each cell is either **re-run** (a run
record of :func:`irlib.results.load_runs`, cited by its run id) or **copied** (a row of
:func:`irlib.results.published_results`, cited by its source and confidence). A re-run row that names the published
method it reproduces (``aliases``) also shows the difference to the published value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["comparison_cells", "comparison_table", "provenance_notes", "to_latex", "to_markdown"]

_KEY = ["dataset", "distractors", "protocol"]


def comparison_cells(
    runs: pd.DataFrame,
    published: pd.DataFrame,
    *,
    datasets: Sequence[str] = ("roxford5k", "rparis6k"),
    protocols: Sequence[str] = ("medium", "hard"),
    labels: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per table cell: ``row`` (method label), ``dataset``, ``distractors`` (``none``/``r1m``),
    ``protocol``, ``map`` (percent), ``provenance`` (``re-run``/``copied``), ``ref`` (run id or source),
    ``confidence`` (copied cells), ``published`` and ``diff`` (re-run minus published, when ``aliases`` maps the
    row to a published method with that cell).

    ``runs``: :func:`load_runs` output; a run's row label is ``labels[run id]`` or ``method/backbone`` (``+ rerank``).
    ``published``: :func:`published_results` output, labelled ``method (backbone)``.
    """
    labels, aliases = dict(labels or {}), dict(aliases or {})
    cells = []
    for _, run in runs.iterrows():
        if run["dataset"] not in datasets:
            continue
        rerank = run.get("rerank")
        default = f"{run['method']}/{run['backbone']}" + (f" + {rerank}" if isinstance(rerank, str) else "")
        for protocol in protocols:
            value = run.get(f"{protocol}.map")
            if value is None or pd.isna(value):
                continue
            cells.append(
                {
                    "row": labels.get(run["id"], default),
                    "dataset": run["dataset"],
                    "distractors": run["distractors"] if isinstance(run["distractors"], str) else "none",
                    "protocol": protocol,
                    "map": float(value),
                    "provenance": "re-run",
                    "ref": run["id"],
                    "confidence": None,
                }
            )
    chosen = published[published["dataset"].isin(datasets) & published["protocol"].isin(protocols)]
    # Where sources disagree on a cell, the most reliable one is shown (verified, then recalled, then derived).
    rank = chosen["confidence"].astype(str).map({"verified": 0, "recalled": 1, "derived": 2}).fillna(3)
    chosen = chosen.assign(_rank=rank).sort_values("_rank", kind="stable")
    for _, row in chosen.iterrows():
        cells.append(
            {
                "row": f"{row['method']} ({row['backbone']})",
                "dataset": row["dataset"],
                "distractors": str(row["distractors"]),
                "protocol": str(row["protocol"]),
                "map": float(row["map"]),
                "provenance": "copied",
                "ref": row["source"],
                "confidence": str(row["confidence"]),
            }
        )
    out = pd.DataFrame(cells, columns=["row", *_KEY, "map", "provenance", "ref", "confidence"])
    rerun = out["provenance"] == "re-run"
    out = pd.concat(
        [
            out[rerun].drop_duplicates(subset=["row", *_KEY], keep="last"),  # the latest run of a label
            out[~rerun].drop_duplicates(subset=["row", *_KEY], keep="first"),  # the most reliable source
        ]
    )
    copied = out[out["provenance"] == "copied"].set_index(["row", *_KEY])["map"]
    out["published"] = [
        copied.get((aliases[r], d, x, p), np.nan) if r in aliases and prov == "re-run" else np.nan
        for r, d, x, p, prov in zip(
            out["row"], out["dataset"], out["distractors"], out["protocol"], out["provenance"], strict=True
        )
    ]
    out["diff"] = out["map"] - out["published"]
    return out.reset_index(drop=True)


def comparison_table(cells: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """The cells as a table of strings: rows = methods, columns = (dataset, distractors, protocol); a re-run value
    reads ``64.7 [r1]`` and a copied one ``64.7 [c2]``, the bracketed key pointing into :func:`provenance_notes`."""
    keys = _cell_keys(cells)
    text = [
        f"{m:.{decimals}f} [{k}]" + ("" if pd.isna(d) else f" ({d:+.{decimals}f})")
        for m, k, d in zip(cells["map"], keys, cells["diff"], strict=True)
    ]
    table = cells.assign(text=text).pivot(index="row", columns=_KEY, values="text").fillna("–")
    order = {"easy": 0, "medium": 1, "hard": 2}
    return table[sorted(table.columns, key=lambda c: (c[0], c[1], order[c[2]]))]


def provenance_notes(cells: pd.DataFrame) -> list[str]:
    """``[key] re-run: run <id>`` / ``[key] copied from <source> (confidence)`` lines, one per distinct reference."""
    keys = _cell_keys(cells)
    notes = {}
    for k, prov, ref, conf in zip(keys, cells["provenance"], cells["ref"], cells["confidence"], strict=True):
        notes[k] = f"[{k}] re-run: run {ref}" if prov == "re-run" else f"[{k}] copied from {ref} ({conf})"
    return list(notes.values())


def _cell_keys(cells: pd.DataFrame) -> list[str]:
    """``r1, r2, ...`` per distinct run id and ``c1, c2, ...`` per distinct source, in order of appearance."""
    seen: dict[tuple[str, str], str] = {}
    counts = {"re-run": 0, "copied": 0}
    out = []
    for prov, ref in zip(cells["provenance"], cells["ref"], strict=True):
        if (prov, ref) not in seen:
            counts[prov] += 1
            seen[(prov, ref)] = f"{'r' if prov == 're-run' else 'c'}{counts[prov]}"
        out.append(seen[(prov, ref)])
    return out


def to_markdown(cells: pd.DataFrame, decimals: int = 1) -> str:
    """The table as Markdown, followed by the provenance notes."""
    table = comparison_table(cells, decimals)
    header = ["method", *(" ".join(c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *row]) + " |" for i, row in zip(table.index, table.to_numpy(), strict=True)]
    return "\n".join([*lines, "", *(f"- {n}" for n in provenance_notes(cells))]) + "\n"


def to_latex(cells: pd.DataFrame, decimals: int = 1) -> str:
    """The table as a booktabs ``tabular`` (multi-level header), followed by the provenance notes as comments."""
    table = comparison_table(cells, decimals)
    latex = table.to_latex(
        escape=True, multicolumn=True, multicolumn_format="c", column_format="l" + "c" * len(table.columns)
    )
    notes = "\n".join(f"% {n}" for n in provenance_notes(cells))
    return latex + notes + "\n"
