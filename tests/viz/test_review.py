"""The overlap reviewer: decisions from buttons and methods, the file it writes, and its thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data.gldv2 import read_exclusion_file
from irlib.data.overlap import OverlapCandidate
from irlib.viz.review import OverlapReviewer


@pytest.fixture
def candidates(tmp_path: Path) -> list[OverlapCandidate]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img_{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(paths[-1])
    return [
        OverlapCandidate(501, 0.61, 0.72, paths[0], paths[1], (10.0, 20.0, 110.0, 70.0), "tower_00_000001", 80),
        OverlapCandidate(77, 0.40, 0.55, paths[1], paths[2], (0.0, 0.0, 200.0, 120.0), "gate_01_000000", 12),
        OverlapCandidate(9000, 0.21, 0.30, paths[2], paths[0], None, "gate_01_000001", None),
    ]


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_candidates_above_the_threshold_start_accepted(candidates: list[OverlapCandidate]) -> None:
    reviewer = OverlapReviewer(candidates, accept_above=0.4)
    assert reviewer.decisions == {501: True, 77: True, 9000: False}
    assert reviewer.accepted == [501, 77] and reviewer.status.value.startswith("2 of 3")
    assert [b.button_style for b in reviewer.buttons[77]] == ["success", ""]
    assert [b.button_style for b in reviewer.buttons[9000]] == ["", "danger"]
    assert not any(OverlapReviewer(candidates).decisions.values())


def test_buttons_and_methods_change_the_decisions(candidates: list[OverlapCandidate]) -> None:
    reviewer = OverlapReviewer(candidates, accept_above=0.5)
    reviewer.buttons[9000][0].click()
    reviewer.buttons[501][1].click()
    assert reviewer.decisions == {501: False, 77: False, 9000: True}
    assert [b.button_style for b in reviewer.buttons[501]] == ["", "danger"]
    reviewer.accept(77)
    reviewer.reject(9000)
    assert reviewer.accepted == [77] and reviewer.status.value.startswith("1 of 3")
    with pytest.raises(KeyError):
        reviewer.accept(12345)


def test_write_button_writes_the_accepted_ids(candidates: list[OverlapCandidate], tmp_path: Path) -> None:
    out = tmp_path / "review" / "exclusions.txt"
    reviewer = OverlapReviewer(candidates, accept_above=0.2, path=out, comments=["model gem/efficientnet_lite0"])
    reviewer.reject(501)
    reviewer.write_button.click()
    assert read_exclusion_file(out) == [77, 9000]
    text = out.read_text()
    assert "# model gem/efficientnet_lite0\n" in text and "3 candidates, 2 accepted, 1 rejected" in text
    assert "\n77  # score 0.400, pair cosine 0.550, 12 inliers, matches query gate_01_000000\n" in text
    assert str(out) in reviewer.status.value
    reviewer.path_text.value = str(tmp_path)  # a folder: the file cannot be written
    reviewer.write_button.click()
    assert "not written" in reviewer.status.value
    assert reviewer.write(tmp_path / "other.txt").read_text().count("\n9000  #") == 1


def test_rows_show_the_pair_with_the_query_cropped(candidates: list[OverlapCandidate]) -> None:
    reviewer = OverlapReviewer(candidates, thumb_size=64)
    rows = reviewer.widget.children[: len(candidates)]
    train_thumb, test_thumb, info = rows[0].children
    assert _png_size(train_thumb.value) == (64, 38)  # 200 x 120, shrunk
    assert _png_size(test_thumb.value) == (64, 32)  # the 100 x 50 box, shrunk
    assert "landmark 501" in info.children[0].value and "80 inliers" in info.children[0].value
    assert "inliers" not in rows[2].children[2].children[0].value
    assert set(reviewer._repr_mimebundle_()) >= {"text/plain"}


def test_duplicate_candidates_are_rejected(candidates: list[OverlapCandidate]) -> None:
    with pytest.raises(ValueError, match="twice"):
        OverlapReviewer([*candidates, candidates[0]])
