"""GLDv2 retrieval files (index.csv, test.csv, retrieval_solution_v2.1.csv) in the official format, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from irlib.data.gldv2 import gldv2_image_path, gldv2_index_test, gldv2_retrieval, gldv2_retrieval_solution
from irlib.eval.metrics import gldv2_map_at_k

T1, T2, T3, T4, T5 = (f"{i:x}" * 16 for i in range(1, 6))
I1, I2, I3, I4 = (f"a{i:015x}" for i in range(1, 5))

SOLUTION_CSV = f"""id,images,Usage
{T1},"{I1} {I2}",Public
{T2},None,Ignored
{T3},{I3},Private
{T4},"{I4}",Ignored
{T5},"",Ignored
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_solution_skips_ignored_rows_whatever_their_images_and_feeds_the_metric(tmp_path):
    path = _write(tmp_path, "retrieval_solution_v2.1.csv", SOLUTION_CSV)
    solution = gldv2_retrieval_solution(path)
    assert solution == {T1: [I1, I2], T3: [I3]}
    assert gldv2_retrieval_solution(path, usage=("Private",)) == {T3: [I3]}
    predictions = {T1: [I3, I2, I2, I1], T3: [I3], T2: [I1]}
    with pytest.raises(ValueError, match="not in the solution"):
        gldv2_map_at_k(predictions, solution)
    assert gldv2_map_at_k(predictions, solution, ignored=[T2]) == gldv2_map_at_k(
        {T1: predictions[T1], T3: predictions[T3]}, solution
    )
    del predictions[T2]
    # T1: hits at ranks 2 and 4 (the duplicate I2 keeps its position) -> (1/2 + 2/4) / 2; T3: 1.
    assert gldv2_map_at_k(predictions, solution) == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"{T1},{I1}", "expected 3 fields"),
        (f"{T1},{I1},Secret", "Usage must be one of"),
        (f"{T1[:-1]},{I1},Public", "is not 16 lowercase"),
        (f'{T1},"{I1}  {I2}",Public', "is not 16 lowercase"),
        (f"{T1},{I1},Public\n{T1},{I2},Private", "listed twice"),
        (f"{T1},None,Public", "a Public row must list its relevant index ids, got 'None'"),
        (f'{T1},"",Private', "a Private row must list its relevant index ids, got 'an empty field'"),
    ],
)
def test_malformed_solution_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path, "retrieval_solution_v2.1.csv", f"id,images,Usage\n{T2},None,Ignored\n{row}\n")
    with pytest.raises(ValueError, match=message) as info:
        gldv2_retrieval_solution(path)
    assert "retrieval_solution_v2.1.csv:" in str(info.value)
    line = 4 if "twice" in message else 3
    assert f":{line}:" in str(info.value)


def test_a_public_row_without_images_is_refused_even_when_only_private_rows_are_asked_for(tmp_path):
    # DELF's ReadSolution would keep it as a query whose one relevant id is 'None' (AP 0, counted in the mean);
    # dropping it would raise the mAP instead. Neither is a ground truth, so the file is refused.
    path = _write(tmp_path, "retrieval_solution_v2.1.csv", f"id,images,Usage\n{T1},None,Public\n{T3},{I3},Private\n")
    with pytest.raises(ValueError, match=r"retrieval_solution_v2.1.csv:2: a Public row must list"):
        gldv2_retrieval_solution(path, usage=("Private",))


def test_bad_header_and_unknown_usage(tmp_path):
    path = _write(tmp_path, "sol.csv", f"id,landmarks,Usage\n{T1},{I1},Public\n")
    with pytest.raises(ValueError, match="sol.csv:1: expected the header"):
        gldv2_retrieval_solution(path)
    with pytest.raises(ValueError, match="unknown usage"):
        gldv2_retrieval_solution(path, usage=("Test",))


def test_index_and_test_ids_and_paths(tmp_path):
    _write(tmp_path, "index.csv", f"id\n{I1}\n{I2}\n")
    _write(tmp_path, "test.csv", f"id\n{T1}\n")
    assert gldv2_index_test(tmp_path) == ([I1, I2], [T1])
    assert gldv2_image_path("index", I1) == f"index/a/0/0/{I1}.jpg"
    _write(tmp_path, "test.csv", f"id\n{T1}\n{T1}\n")
    with pytest.raises(ValueError, match=r"test.csv:3: image id .* listed twice \(lines 2 and 3\)"):
        gldv2_index_test(tmp_path)
    (tmp_path / "index.csv").unlink()
    with pytest.raises(FileNotFoundError, match="index.csv"):
        gldv2_index_test(tmp_path)


def test_retrieval_benchmark_cross_checks_solution_against_the_id_files(tmp_path):
    _write(tmp_path, "index.csv", f"id\n{I1}\n{I2}\n{I3}\n{I4}\n")
    _write(tmp_path, "test.csv", f"id\n{T1}\n{T2}\n{T3}\n{T4}\n{T5}\n")
    _write(tmp_path, "retrieval_solution_v2.1.csv", SOLUTION_CSV)
    bench = gldv2_retrieval(tmp_path)
    assert bench.query_ids == [T1, T3]
    assert bench.query_paths()[1] == tmp_path / gldv2_image_path("test", T3)
    assert len(bench.index_paths()) == 4 and len(bench.test_ids) == 5
    assert bench.unscored_ids == [T2, T4, T5]
    everything = {t: [I1] for t in bench.test_ids}  # a submission over every test image
    # T1: I1 relevant at rank 1, 2 relevant -> 1/2; T3: I1 is not I3 -> 0
    assert gldv2_map_at_k(everything, bench.solution, ignored=bench.unscored_ids) == pytest.approx(1 / 4)
    _write(tmp_path, "index.csv", f"id\n{I1}\n{I2}\n")
    with pytest.raises(ValueError, match=rf"1 index ids are not in .*index.csv: {I3}$"):
        gldv2_retrieval(tmp_path)
    _write(tmp_path, "index.csv", f"id\n{I1}\n{I2}\n{I3}\n{I4}\n")
    _write(tmp_path, "test.csv", f"id\n{T3}\n")
    with pytest.raises(ValueError, match=rf"1 test ids are not in .*test.csv: {T1}"):
        gldv2_retrieval(tmp_path)
