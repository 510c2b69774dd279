"""The overlap reviewer: decisions from buttons and methods, the file it writes, and its thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data.gldv2 import read_exclusion_file
from irlib.data.overlap import OverlapCandidate, merge_candidates
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


def test_text_and_merged_candidates_show_their_evidence(candidates: list[OverlapCandidate], tmp_path: Path) -> None:
    nan = float("nan")
    text = [
        OverlapCandidate(77, 0.9, nan, None, None, None, "", source="text", matched_name="Porte Valmérac",
                         category="Porte Valmérac (Demoville)", name_score=1.0, matched_landmark="gate_01"),
        OverlapCandidate(31, 0.95, nan, None, None, None, "", source="text", matched_name="Hôtel des Invalides",
                         category="Hôtel des Invalides", name_score=0.95, matched_landmark="paris_invalides"),
    ]  # fmt: skip
    merged = merge_candidates(candidates, text)
    reviewer = OverlapReviewer(merged, accept_above=0.3, thumb_size=64)
    assert reviewer.decisions == {501: True, 77: True, 9000: False, 31: False}  # text only: never pre-accepted
    infos = [row.children[2].children[0].value for row in reviewer.widget.children[: len(merged)]]
    assert "evidence: visual" in infos[0] and "name" not in infos[0]
    assert "evidence: both (visual + text)" in infos[1] and "Porte Valmérac" in infos[1] and "0.400" in infos[1]
    assert "evidence: text only" in infos[3] and "Hôtel des Invalides" in infos[3] and "pair cosine" not in infos[3]
    train_thumb, test_thumb, _ = reviewer.widget.children[3].children
    assert _png_size(train_thumb.value) == _png_size(test_thumb.value) == (64, 48)  # placeholders: no image
    reviewer.accept(31)
    text_file = reviewer.write(tmp_path / "excl.txt").read_text()
    assert read_exclusion_file(tmp_path / "excl.txt") == [31, 77, 501]
    assert "\n77  # score 0.400, pair cosine 0.550, 12 inliers, matches query gate_01_000000; text: name " in text_file
    assert "\n31  # text only: name 'Hôtel des Invalides' of paris_invalides in category" in text_file
    assert "\n501  # score 0.610, pair cosine 0.720, 80 inliers, matches query tower_00_000001\n" in text_file
