"""Paper style: one place for fonts, sizes and the palette of every irlib figure (seaborn + matplotlib rcParams)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib as mpl
import seaborn as sns

RESULT_COLORS: dict[str, str] = {"positive": "#2ca02c", "negative": "#d62728", "junk": "#9a9a9a"}
"""Frame colours of retrieved images by their label under a protocol."""

PAPER_RC: dict[str, object] = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
    "mathtext.fontset": "dejavuserif",
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable
    "ps.fonttype": 42,
}


def set_paper_style(context: str = "paper", font_scale: float = 1.0, palette: str = "colorblind") -> list[tuple]:
    """Apply the paper theme globally (``sns.set_theme`` + :data:`PAPER_RC`); returns the palette's colours."""
    sns.set_theme(context=context, style="ticks", palette=palette, font_scale=font_scale, rc=PAPER_RC)
    return sns.color_palette(palette)


@contextmanager
def paper_style(context: str = "paper", font_scale: float = 1.0, palette: str = "colorblind") -> Iterator[list[tuple]]:
    """:func:`set_paper_style` for the figures made inside the ``with`` block; the previous rcParams come back after."""
    with mpl.rc_context():
        yield set_paper_style(context, font_scale, palette)
