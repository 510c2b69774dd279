"""The retrieval browser: widgets drive the shown ranking; the AP label equals the per-query AP."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from irlib.data.revisited import RevisitedDataset
from irlib.eval.revisited import evaluate
from irlib.viz.browser import RetrievalBrowser

SCORES = np.array([[0.7, 0.9, 0.3, 0.8, 0.2, 0.5], [0.1, 0.2, 0.3, 0.9, 0.5, 0.5]])


def test_browser_follows_query_method_and_protocol(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    other = SCORES[:, ::-1].copy()
    browser = RetrievalBrowser(ds, {"a": SCORES, "b": other}, k=4, thumb=32)
    assert browser.widget.children and bytes(browser.image.value).startswith(b"\x89PNG")
    expected = {m: evaluate(ds.gnd, scores=s) for m, s in (("a", SCORES), ("b", other))}
    assert browser.ap == pytest.approx(expected["a"]["medium"]["aps"][0] * 100)
    first = bytes(browser.image.value)
    browser.query.value = "q_1"  # a widget change redraws
    assert browser.ap == pytest.approx(expected["a"]["medium"]["aps"][1] * 100)
    assert bytes(browser.image.value) != first
    browser.show(method="b", protocol="hard")
    assert (browser.method.value, browser.protocol.value) == ("b", "hard")
    ap = expected["b"]["hard"]["aps"][1] * 100
    assert browser.ap == pytest.approx(ap)
    assert browser.label.value == f"q_1 | b | hard: AP {ap:.1f}"
    with pytest.raises(ValueError, match="at least one method"):
        RetrievalBrowser(ds, {})
