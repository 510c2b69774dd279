"""The paper's comparison table: methods × dataset (± 1M) × protocol, every cell saying where its number comes from.

Papers in this field mix re-run and copied numbers without saying which; here each cell is either **re-run** (a run
record of :func:`irlib.results.load_runs`, cited by its run id) or **copied** (a row of
:func:`irlib.results.published_results`, cited by its source and confidence). A re-run row that names the published
row it reproduces (``aliases``) also shows the difference to the published value. Where published sources disagree
on a cell, the most reliable value is shown, the cell is marked disputed and the notes list the other values.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlib.io import atomic_path

__all__ = [
    "comparison_cells",
    "comparison_table",
    "export_frame",
    "export_table",
    "frame_to_latex",
    "frame_to_markdown",
    "provenance_notes",
    "published_label",
    "run_label",
    "run_labels",
    "to_latex",
    "to_markdown",
]

_KEY = ["dataset", "distractors", "protocol"]
_IDENTITY = ["method", "backbone", "train_set"]  # what a published row label must tell apart
_PUBLISHED_COLUMNS = [*_IDENTITY, *_KEY, "map", "source", "confidence", "note"]
_RUN_COLUMNS = ["id", "created", "dataset", "distractors", "method", "backbone", "rerank"]
_REVISITED = ("easy", "medium", "hard")  # a universal benchmark's "protocol" is its metric column, e.g. "R@1"
_RELIABILITY = {"verified": 0, "recalled": 1, "derived": 2}  # lower is more reliable; unknown confidences last
_CELL_COLUMNS = ["row", *_KEY, "map", "provenance", "ref", "confidence", "note", "alternatives"]


def run_label(run: Mapping[str, Any]) -> str:
    """``method/backbone``, with `` + <reranker>`` when the run reranks."""
    rerank = run.get("rerank")
    return f"{run['method']}/{run['backbone']}" + (f" + {rerank}" if isinstance(rerank, str) and rerank else "")


def run_labels(runs: pd.DataFrame, root: str | os.PathLike) -> dict[str, str]:
    """Run id -> ``<run folder relative to root>: <run_label>`` (the root's own name for a run in ``root`` itself),
    unique per folder, e.g. for two evaluations of one model before and after fine-tuning."""
    folders = [os.path.relpath(path, root) for path in runs["path"]]
    folders = [Path(root).resolve().name if f == os.curdir else f for f in folders]
    return {run["id"]: f"{f}: {run_label(run)}" for f, (_, run) in zip(folders, runs.iterrows(), strict=True)}


def published_label(row: Mapping[str, Any]) -> str:
    """``method (backbone, train_set)``, the row label of a published number (``method (backbone)`` when the
    training set is empty)."""
    inside = ", ".join(str(row[c]) for c in ("backbone", "train_set") if str(row[c]))
    return f"{row['method']} ({inside})"


def comparison_cells(
    runs: pd.DataFrame,
    published: pd.DataFrame,
    *,
    datasets: Sequence[str] = ("roxford5k", "rparis6k"),
    protocols: Sequence[str] = ("medium", "hard"),
    labels: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per table cell: ``row`` (label), ``dataset``, ``distractors`` (``none``/``r1m``), ``protocol``,
    ``map`` (percent), ``provenance`` (``re-run``/``copied``), ``ref`` (run id or source), ``confidence`` and
    ``note`` (copied cells), ``alternatives`` (copied cells whose sources disagree: the other values as
    ``(map, source, confidence, note)`` tuples; empty otherwise), ``published`` and ``diff`` (re-run minus
    published, where ``aliases`` maps the row to a published row with that cell).

    A universal benchmark's cells are named by its metric as the protocol, e.g. ``datasets=("uned",),
    protocols=("R@1", "mMP@5")`` or ``("ilias",), ("mAP@1000",)``.

    ``runs``: :func:`load_runs` output; a run's label is ``labels[run id]`` or :func:`run_label`, and of several
    runs with one label and cell the latest (``created``) is shown. ``published``: :func:`published_results`
    output, labelled by :func:`published_label`; the most reliable value (verified, recalled, derived, then file
    order) of a cell is shown. ``aliases``: re-run label -> published label.

    Raises ``ValueError`` when columns are missing, one published label names different rows with different values
    for a cell, a label is both re-run and published, or an alias names an unknown row (with close matches); warns
    when an aliased run's backbone or reranking visibly disagrees with the published label.
    """
    labels, aliases = dict(labels or {}), dict(aliases or {})
    _require(runs, _RUN_COLUMNS, "runs")
    _require(published, _PUBLISHED_COLUMNS, "published")
    runs = runs[runs["dataset"].isin(datasets)]
    runs = runs.assign(_row=[labels.get(r["id"], run_label(r)) for _, r in runs.iterrows()])
    rerun = _rerun_cells(runs, protocols)
    text = [*_IDENTITY, *_KEY, "source", "confidence", "note"]
    published = published.assign(**{c: published[c].astype(object).fillna("").astype(str) for c in text})
    published = published.assign(row=[published_label(r) for _, r in published.iterrows()])
    copied = _copied_cells(published[published["dataset"].isin(datasets) & published["protocol"].isin(protocols)])
    both = sorted(set(rerun["row"]) & set(copied["row"]))
    if both:
        raise ValueError(f"labels {both} name both re-run and published rows; relabel the runs (labels=...)")
    _check_aliases(aliases, runs, published)
    shown = copied.set_index(["row", *_KEY])["map"]
    rerun["published"] = [
        shown.get((aliases[r], *cell), np.nan) if r in aliases else np.nan
        for r, *cell in zip(*(rerun[c] for c in ["row", *_KEY]), strict=True)
    ]
    out = pd.concat([rerun, copied.assign(published=np.nan)], ignore_index=True)
    out["diff"] = out["map"] - out["published"]
    return out


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it needs {list(columns)}")


def _rerun_cells(runs: pd.DataFrame, protocols: Sequence[str]) -> pd.DataFrame:
    """The re-run cells of ``runs`` (with their labels in ``_row``), the latest run of a label and cell kept."""
    created = pd.to_datetime(runs["created"], utc=True)
    cells = []
    for _, run in runs.assign(_created=created).sort_values("_created", kind="stable", na_position="first").iterrows():
        for protocol in protocols:
            value = run.get(f"{protocol}.map" if protocol in _REVISITED else protocol)
            if value is None or pd.isna(value):
                continue
            distractors = run["distractors"] if isinstance(run["distractors"], str) else "none"
            cell = [run["_row"], run["dataset"], distractors, protocol, float(value), "re-run", run["id"], None, "", ()]
            cells.append(cell)
    return pd.DataFrame(cells, columns=_CELL_COLUMNS).drop_duplicates(subset=["row", *_KEY], keep="last")


def _copied_cells(published: pd.DataFrame) -> pd.DataFrame:
    """One cell per label and cell of ``published`` (labelled in ``row``): its most reliable value, and the other
    values in ``alternatives`` when sources disagree."""
    rank = published["confidence"].map(_RELIABILITY).fillna(len(_RELIABILITY))
    ordered = published.assign(_rank=rank).sort_values("_rank", kind="stable")
    cells = []
    for (row, *cell), group in ordered.groupby(["row", *_KEY], sort=False):
        if group["map"].nunique() > 1 and len(group[_IDENTITY].drop_duplicates()) > 1:
            rows = group[[*_IDENTITY, "map", "source"]].to_dict("records")
            raise ValueError(f"published label {row!r} names different rows with different values for {cell}: {rows}")
        best = group.iloc[0]
        others = group[group["map"] != best["map"]].drop_duplicates(["map", "source", "confidence"])
        alternatives = tuple(zip(others["map"], others["source"], others["confidence"], others["note"], strict=True))
        cells.append(
            [row, *cell, float(best["map"]), "copied", best["source"], best["confidence"], best["note"], alternatives]
        )
    return pd.DataFrame(cells, columns=_CELL_COLUMNS)


def _check_aliases(aliases: Mapping[str, str], runs: pd.DataFrame, published: pd.DataFrame) -> None:
    """Raise for an alias naming an unknown re-run or published row; warn where the run's backbone or reranking
    visibly disagrees with the published label."""
    known = {"re-run": sorted(set(runs["_row"])), "published": sorted(set(published["row"]))}
    for kind, names in zip(known, (aliases.keys(), aliases.values()), strict=True):
        for name in names:
            if name not in known[kind]:
                close = difflib.get_close_matches(name, known[kind], n=5, cutoff=0.5)
                raise ValueError(f"aliases: unknown {kind} row {name!r}; close matches: {close or 'none'}")
    for source, target in aliases.items():
        pub = published[published["row"] == target].iloc[0]
        for _, run in runs[runs["_row"] == source].drop_duplicates(["backbone", "rerank"]).iterrows():
            problem = _mismatch(run, pub)
            if problem:
                warnings.warn(f"aliases: {source!r} -> {target!r}: {problem}", stacklevel=3)


def _resnet_depth(backbone: str) -> str | None:
    """``50`` for ``resnet50``, ``R50``, ``CVNet R50 ...``; None when no ResNet depth is named."""
    found = re.search(r"(?:resnet|\br)[-_]?(\d+)", backbone, flags=re.IGNORECASE)
    return found.group(1) if found else None


def _mismatch(run: pd.Series, pub: pd.Series) -> str:
    """What visibly disagrees between a run and a published row ('' when nothing does)."""
    problems = []
    if _resnet_depth(str(run["backbone"])) != _resnet_depth(pub["backbone"]):
        problems.append(f"run backbone {run['backbone']!r}, published {pub['backbone']!r}")
    reranked = isinstance(run["rerank"], str) and bool(run["rerank"])
    if reranked and re.search(r"\bno[ -]re-?rank", pub["method"], flags=re.IGNORECASE):
        problems.append(f"run reranks ({run['rerank']}), published {pub['method']!r} does not")
    if not reranked and re.search(r"\+\s*re-?rank", pub["method"], flags=re.IGNORECASE):
        problems.append(f"run does not rerank, published {pub['method']!r} does")
    return "; ".join(problems)


def comparison_table(cells: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """The cells as a table of strings: rows = labels, columns = (dataset, distractors, protocol); a re-run value
    reads ``64.7 [r1]``, a copied one ``64.7 [c2]`` and a disputed one ``77.1 [c5, d1]``, the bracketed keys
    pointing into :func:`provenance_notes`; an aliased re-run value ends with its difference, e.g. ``(+1.3)``."""
    refs, disputes = _cell_keys(cells), _dispute_keys(cells)
    text = [
        f"{m:.{decimals}f} [{k}{'' if not dk else ', ' + dk}]" + ("" if pd.isna(d) else f" ({d:+.{decimals}f})")
        for m, k, dk, d in zip(cells["map"], refs, disputes, cells["diff"], strict=True)
    ]
    table = cells.assign(text=text).pivot(index="row", columns=_KEY, values="text").fillna("–")
    order = {"easy": 0, "medium": 1, "hard": 2}
    return table[sorted(table.columns, key=lambda c: (c[0], c[1], order.get(c[2], len(order))))]


def provenance_notes(cells: pd.DataFrame) -> list[str]:
    """One line per distinct reference (``[r1] re-run: run <id>``, ``[c1] copied from <source> (<confidence>;
    note: <the published row's note>)``), then one per disputed cell: ``[d1] <row>, <dataset> <distractors>
    <protocol>: shown ...; other values: ...`` with every value's source, confidence and note."""
    notes = {}
    columns = (cells[c] for c in ("provenance", "ref", "confidence", "note"))
    for k, prov, ref, conf, note in zip(_cell_keys(cells), *columns, strict=True):
        notes[k] = (
            f"[{k}] re-run: run {ref}" if prov == "re-run" else f"[{k}] copied from {_source_text(ref, conf, note)}"
        )
    disputes = []
    for dk, (_, cell) in zip(_dispute_keys(cells), cells.iterrows(), strict=True):
        if dk:
            shown = _value_text(cell["map"], cell["ref"], cell["confidence"], cell["note"])
            others = "; ".join(_value_text(*alternative) for alternative in cell["alternatives"])
            where = " ".join(str(cell[c]) for c in _KEY)
            disputes.append(f"[{dk}] disputed: {cell['row']}, {where}: shown {shown}; other values: {others}")
    return [*notes.values(), *disputes]


def _source_text(source: str, confidence: str, note: str) -> str:
    return f"{source} ({confidence}{'; note: ' + note if note else ''})"


def _value_text(value: float, source: str, confidence: str, note: str) -> str:
    return f"{value:g} from {_source_text(source, confidence, note)}"


def _cell_keys(cells: pd.DataFrame) -> list[str]:
    """``r1, r2, ...`` per distinct run id and ``c1, c2, ...`` per distinct (source, confidence, note), in order:
    a published row's note (e.g. "queries not cropped") reaches the legend of every cell it concerns."""
    seen: dict[tuple[str, str, Any, str], str] = {}
    counts = {"re-run": 0, "copied": 0}
    out = []
    for key in zip(cells["provenance"], cells["ref"], cells["confidence"], cells["note"], strict=True):
        if key not in seen:
            counts[key[0]] += 1
            seen[key] = f"{'r' if key[0] == 're-run' else 'c'}{counts[key[0]]}"
        out.append(seen[key])
    return out


def _dispute_keys(cells: pd.DataFrame) -> list[str]:
    """``d1, d2, ...`` for each disputed cell (one with alternatives), ``''`` for the others."""
    disputed = [bool(a) for a in cells["alternatives"]]
    return [f"d{sum(disputed[: i + 1])}" if d else "" for i, d in enumerate(disputed)]


def _flat(text: object) -> str:
    """``text`` on one line: newlines and runs of whitespace become one space."""
    return " ".join(str(text).split())


def _markdown_escape(text: object) -> str:
    return _flat(text).replace("|", r"\|")


def to_markdown(cells: pd.DataFrame, decimals: int = 1) -> str:
    """The table as Markdown (``|`` escaped), followed by the provenance notes as a list."""
    table = comparison_table(cells, decimals)
    header = ["method", *(" ".join(c) for c in table.columns)]
    body = [[label, *row] for label, row in zip(table.index, table.to_numpy(), strict=True)]
    return _markdown(header, body, provenance_notes(cells))


def _markdown(header: Sequence[Any], body: Sequence[Sequence[Any]], notes: Sequence[str]) -> str:
    lines = ["| " + " | ".join(_markdown_escape(x) for x in row) + " |" for row in [header, *body]]
    lines.insert(1, "|" + "---|" * len(header))
    return "\n".join([*lines, "", *(f"- {_markdown_escape(n)}" for n in notes)]) + "\n"


def _cell_text(value: Any, decimals: int) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.{decimals}f}"
    return str(value)


def _frame_rows(frame: pd.DataFrame, decimals: int) -> tuple[list[str], list[list[str]]]:
    """Header (index name first) and body of any table, floats with ``decimals`` digits and NaN empty."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    body = [
        [str(i), *(_cell_text(v, decimals) for v in row)] for i, row in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    return header, body


def frame_to_markdown(frame: pd.DataFrame, notes: Sequence[str] = (), decimals: int = 2) -> str:
    """Any table (its index as the first column) as Markdown, followed by ``notes`` as a list."""
    return _markdown(*_frame_rows(frame, decimals), notes)


def frame_to_latex(frame: pd.DataFrame, notes: Sequence[str] = (), decimals: int = 2) -> str:
    """Any table (its index as the first column) as a booktabs ``tabular``, followed by ``notes`` (footnotesize)."""
    header, body = _frame_rows(frame, decimals)
    lines = [rf"\begin{{tabular}}{{l{'l' * (len(header) - 1)}}}", r"\toprule"]
    lines.append(" & ".join(_latex_escape(x) for x in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_latex_escape(x) for x in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\begin{flushleft}\footnotesize", *(_latex_escape(n) + r"\par" for n in notes), r"\end{flushleft}"]
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "[": "{[}",  # a row or note starting with "[" after "\\" would be read as its optional argument
    "]": "{]}",
    "–": "--",
    "—": "---",
    "−": "-",
    "±": r"\ensuremath{\pm}",
    "×": r"\ensuremath{\times}",
    "↑": r"\ensuremath{\uparrow}",
    "↓": r"\ensuremath{\downarrow}",
    "†": r"\dag{}",
}
_LATEX_SPECIAL = re.compile("|".join(map(re.escape, _LATEX)))


def _latex_escape(text: object) -> str:
    """``text`` on one line, safe in LaTeX text mode: specials escaped, brackets braced, common symbols mapped."""
    return _LATEX_SPECIAL.sub(lambda m: _LATEX[m.group()], _flat(text))


def to_latex(cells: pd.DataFrame, decimals: int = 1) -> str:
    """The table as a booktabs ``tabular`` (one header row per level: dataset, distractors, protocol), followed by
    the provenance notes as a visible ``\\footnotesize`` block, so that ``\\input`` in a ``table`` shows them."""
    table = comparison_table(cells, decimals)
    columns = list(table.columns)
    lines = [rf"\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule"]
    for level in range(len(_KEY) - 1):
        spans: list[list[Any]] = []  # [key, first column, width] of the runs of equal header prefixes
        for i, column in enumerate(columns):
            if spans and spans[-1][0] == column[: level + 1]:
                spans[-1][2] += 1
            else:
                spans.append([column[: level + 1], i, 1])
        heads = (rf"\multicolumn{{{w}}}{{c}}{{{_latex_escape(key[-1])}}}" for key, _, w in spans)
        lines.append(" & " + " & ".join(heads) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{i + 2}-{i + w + 1}}}" for _, i, w in spans))
    lines.append(" & ".join(_latex_escape(x) for x in ["method", *(c[-1] for c in columns)]) + r" \\")
    lines.append(r"\midrule")
    for label, row in zip(table.index, table.to_numpy(), strict=True):
        lines.append(" & ".join(_latex_escape(x) for x in [label, *row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\begin{flushleft}\footnotesize"]
    lines += [_latex_escape(n) + r"\par" for n in provenance_notes(cells)]
    lines.append(r"\end{flushleft}")
    return "\n".join(lines) + "\n"


def export_table(cells: pd.DataFrame, out_dir: str | os.PathLike, name: str, decimals: int = 1) -> list[Path]:
    """Write ``<out_dir>/<name>.tex`` (:func:`to_latex`) and ``.md`` (:func:`to_markdown`) atomically; returns
    both paths."""
    return _write_pair(out_dir, name, to_latex(cells, decimals), to_markdown(cells, decimals))


def export_frame(
    frame: pd.DataFrame, out_dir: str | os.PathLike, name: str, notes: Sequence[str] = (), decimals: int = 2
) -> list[Path]:
    """Write any table as ``<out_dir>/<name>.tex`` (:func:`frame_to_latex`) and ``.md`` (:func:`frame_to_markdown`)
    atomically; returns both paths."""
    latex, markdown = frame_to_latex(frame, notes, decimals), frame_to_markdown(frame, notes, decimals)
    return _write_pair(out_dir, name, latex, markdown)


def _write_pair(out_dir: str | os.PathLike, name: str, latex: str, markdown: str) -> list[Path]:
    paths = [Path(out_dir) / f"{name}.tex", Path(out_dir) / f"{name}.md"]
    for path, text in zip(paths, (latex, markdown), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
