"""Review train-test overlap candidates in a notebook, then write the accepted ones as an exclusion file.

CiDeR (CVPR 2024) had people check every candidate before removing it from GLDv2-clean; this is that step for
the candidates of :func:`irlib.eval.overlap.find_overlaps`, of the name matcher
(:func:`irlib.data.landmark_names.name_candidates`) or both merged (:func:`irlib.data.overlap.merge_candidates`);
each row says which evidence it has: visual, text or both.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image, ImageDraw

from irlib.data.images import load_image
from irlib.data.overlap import OverlapCandidate, write_exclusion_file
from irlib.data.revisited import crop_query

__all__ = ["OverlapReviewer"]


class OverlapReviewer:
    """Accept / Reject buttons for each candidate beside its (training image, test image) pair.

    Show it as a cell's last expression (or ``display(reviewer.widget)``). Everything the buttons do is also a
    method, so a script or a non-interactive notebook run can drive it, and nothing needs a running kernel.

    Attributes:
        candidates: the candidates, in rank order.
        decisions: ``landmark_id -> True`` (accepted: exclude it) or ``False`` (rejected).
        buttons: ``landmark_id -> (accept button, reject button)``.
        path_text: the output file name the "Write exclusion file" button uses.
        write_button: that button.
        status: a line saying how many are accepted, or what was written.
        widget: the whole reviewer (a ``VBox``).
    """

    def __init__(
        self,
        candidates: Sequence[OverlapCandidate],
        *,
        accept_above: float | None = None,
        path: str | os.PathLike = "rgldv2_exclusions.txt",
        comments: Sequence[str] = (),
        thumb_size: int = 224,
    ) -> None:
        """``accept_above``: candidates with visual evidence whose score is at least this start accepted, the others
        rejected (all start rejected with ``None``; text-only candidates always start rejected: a name match needs a
        person's look). ``comments`` go into the file's header (e.g. the model and settings)."""
        self.candidates = list(candidates)
        ids = [c.landmark_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidates list a landmark_id twice")
        self.comments = list(comments)
        self.decisions: dict[int, bool] = {
            c.landmark_id: accept_above is not None and c.source != "text" and c.score >= accept_above
            for c in self.candidates
        }
        self.buttons: dict[int, tuple[widgets.Button, widgets.Button]] = {}
        rows = [self._row(rank, c, thumb_size) for rank, c in enumerate(self.candidates, 1)]
        self.path_text = widgets.Text(value=str(path), description="File", layout=widgets.Layout(width="32em"))
        self.write_button = widgets.Button(description="Write exclusion file", icon="save")
        self.write_button.on_click(lambda _: self._write_clicked())
        self.status = widgets.HTML()
        self.widget = widgets.VBox([*rows, widgets.HBox([self.path_text, self.write_button]), self.status])
        for lid in self.decisions:
            self._show(lid)
        self._count()

    @property
    def accepted(self) -> list[int]:
        """Accepted landmark ids, in rank order."""
        return [lid for lid, ok in self.decisions.items() if ok]

    def accept(self, landmark_id: int) -> None:
        self._decide(landmark_id, True)

    def reject(self, landmark_id: int) -> None:
        self._decide(landmark_id, False)

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the accepted ids to ``path`` (default: the file box), with each one's evidence as a comment."""
        n_accepted = len(self.accepted)
        comments = [
            *self.comments,
            f"reviewed with irlib.viz.review.OverlapReviewer: {len(self.candidates)} candidates, "
            f"{n_accepted} accepted, {len(self.candidates) - n_accepted} rejected",
        ]
        notes = {c.landmark_id: _evidence(c) for c in self.candidates}
        return write_exclusion_file(path if path is not None else self.path_text.value, self.accepted, comments, notes)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _decide(self, landmark_id: int, accepted: bool) -> None:
        if landmark_id not in self.decisions:
            raise KeyError(f"landmark_id {landmark_id} is not a candidate")
        self.decisions[landmark_id] = accepted
        self._show(landmark_id)
        self._count()

    def _show(self, landmark_id: int) -> None:
        accept, reject = self.buttons[landmark_id]
        ok = self.decisions[landmark_id]
        accept.button_style, reject.button_style = ("success", "") if ok else ("", "danger")

    def _count(self) -> None:
        self.status.value = f"{len(self.accepted)} of {len(self.candidates)} candidates accepted"

    def _write_clicked(self) -> None:
        try:
            path = self.write()
        except (OSError, ValueError) as err:
            self.status.value = f"<b>not written</b>: {html.escape(str(err))}"
            return
        self.status.value = f"wrote {len(self.accepted)} landmark ids to <code>{html.escape(str(path))}</code>"

    def _row(self, rank: int, c: OverlapCandidate, thumb_size: int) -> widgets.HBox:
        accept = widgets.Button(description="Accept", icon="check", layout=widgets.Layout(width="7em"))
        reject = widgets.Button(description="Reject", icon="times", layout=widgets.Layout(width="7em"))
        accept.on_click(lambda _: self.accept(c.landmark_id))
        reject.on_click(lambda _: self.reject(c.landmark_id))
        self.buttons[c.landmark_id] = (accept, reject)
        info = widgets.HTML(_info_html(rank, c))
        images = [
            widgets.Image(value=_thumbnail(path, box, thumb_size), format="png")
            for path, box in ((c.train_image, None), (c.test_image, c.test_box))
        ]
        return widgets.HBox([*images, widgets.VBox([info, widgets.HBox([accept, reject])])])


def _thumbnail(path: str | os.PathLike | None, box: Sequence[float] | None, size: int) -> bytes:
    """PNG bytes of the image (cropped to ``box``), shrunk to at most ``size`` pixels a side; without an image
    (a text-only candidate) a grey ``size`` x ``3 size / 4`` placeholder saying so."""
    if path is None:
        img = Image.new("RGB", (size, max(1, 3 * size // 4)), (200, 200, 200))
        ImageDraw.Draw(img).text((6, 6), "no image", fill=(90, 90, 90))
    else:
        img = load_image(path)
        if box is not None:
            img = crop_query(img, box)
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_SOURCE_LABEL = {"visual": "visual", "text": "text only", "both": "both (visual + text)"}


def _text_evidence(c: OverlapCandidate) -> str:
    score = c.name_score if c.name_score is not None else c.score
    return f"name {c.matched_name!r} of {c.matched_landmark} in category {c.category!r} (name score {score:.3f})"


def _evidence(c: OverlapCandidate) -> str:
    """One line for the exclusion file: the visual evidence (unchanged format), the text evidence, or both."""
    if c.source == "text":
        return f"text only: {_text_evidence(c)}"
    inliers = "" if c.inliers is None else f", {c.inliers} inliers"
    visual = f"score {c.score:.3f}, pair cosine {c.similarity:.3f}{inliers}, matches query {c.query}"
    return visual if c.source == "visual" else f"{visual}; text: {_text_evidence(c)}"


def _info_html(rank: int, c: OverlapCandidate) -> str:
    """The row's evidence: its source, then the visual and / or text lines."""
    lines = [f"<b>#{rank}: landmark {c.landmark_id}</b> &middot; evidence: {_SOURCE_LABEL[c.source]}"]
    if c.source != "text":
        inliers = "" if c.inliers is None else f" &middot; {c.inliers} inliers"
        lines.append(f"score {c.score:.3f} &middot; pair cosine {c.similarity:.3f}{inliers}")
        lines.append(f"matches query <code>{html.escape(c.query)}</code>")
    if c.source != "text" and c.matched_name is None:
        return "<br>".join(lines)
    score = c.name_score if c.name_score is not None else c.score
    lines.append(
        f"name <b>{html.escape(str(c.matched_name))}</b> ({html.escape(str(c.matched_landmark))}) &middot; name "
        f"score {score:.3f}"
    )
    lines.append(f"category <i>{html.escape(str(c.category))}</i>")
    if c.source == "text" and c.query:
        lines.append(f"shown beside query <code>{html.escape(c.query)}</code>")
    return "<br>".join(lines)
