"""A JupyterLab browser of rankings: pick a query, a method and a protocol, see the top-k results and the AP."""

from __future__ import annotations

import io
from collections.abc import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt

from irlib.data.revisited import RevisitedDataset
from irlib.eval.revisited import PROTOCOLS
from irlib.viz.retrieval import Scores, plot_retrieval_grid, query_ap

__all__ = ["RetrievalBrowser"]


class RetrievalBrowser:
    """Widgets over ``results`` (method name -> ``(n_queries, n_db)`` scores or an ``EvalResult``).

    ``widget`` is the box to display; :meth:`show` drives it from code (the dropdowns follow). After each change,
    ``ap`` holds the AP (percent) of the shown query and ``image.value`` the PNG of its retrieval row.
    """

    def __init__(self, dataset: RevisitedDataset, results: Mapping[str, Scores], k: int = 10, thumb: int = 128):
        if not results:
            raise ValueError("results must name at least one method")
        self.dataset, self.results, self.k, self.thumb = dataset, dict(results), k, thumb
        self.query = widgets.Dropdown(options=list(dataset.qimlist), description="query")
        self.method = widgets.Dropdown(options=list(self.results), description="method")
        self.protocol = widgets.ToggleButtons(options=list(PROTOCOLS), value="medium", description="protocol")
        self.label = widgets.Label()
        self.image = widgets.Image(format="png")
        self.ap = float("nan")
        self._updating = False
        for w in (self.query, self.method, self.protocol):
            w.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.query, self.method]), self.protocol, self.label, self.image])
        self._render()

    def show(self, query: str | None = None, method: str | None = None, protocol: str | None = None) -> None:
        """Select any of query (name), method and protocol, then redraw once."""
        self._updating = True
        try:
            for w, v in ((self.query, query), (self.method, method), (self.protocol, protocol)):
                if v is not None:
                    w.value = v
        finally:
            self._updating = False
        self._render()

    def _on_change(self, _change: dict) -> None:
        if not self._updating:
            self._render()

    def _render(self) -> None:
        scores = self.results[self.method.value]
        q, p = self.query.value, self.protocol.value
        self.ap = query_ap(self.dataset, scores, q, p)
        self.label.value = f"{q} | {self.method.value} | {p}: AP {self.ap:.1f}"
        fig = plot_retrieval_grid(self.dataset, scores, [q], protocol=p, k=self.k, thumb=self.thumb)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        self.image.value = buf.getvalue()
