"""The text step of overlap detection: name normalisation, the ROxf/RPar name table, the matcher on planted names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from irlib.data.gldv2 import gldv2_train
from irlib.data.landmark_names import (
    REVISITED_LANDMARKS,
    EvalLandmark,
    category_name,
    landmark_of_query,
    landmark_table,
    match_landmark_names,
    name_candidates,
    name_tokens,
    normalise_name,
    query_landmarks,
)
from irlib.data.revisited import RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.io import load_data_pickle

REVISITOP = Path(__file__).resolve().parents[3] / "shared" / "data" / "revisitop"
COMMONS = "http://commons.wikimedia.org/wiki/Category:"
# 6 test landmarks, 3 planted overlaps, 6 ordinary training classes (one text-only, two decoys): about 1 s.
NAMED = DemoConfig(
    seed=2,
    n_test_landmarks=6,
    queries_per_landmark=1,
    views_per_landmark=2,
    n_distractors=0,
    n_train_landmarks=6,
    train_views_per_landmark=1,
    n_overlap_landmarks=3,
    image_size=(96, 72),
    uned_train_classes=1,
    uned_val_classes=1,
    uned_test_classes=1,
    uned_index_only_classes=0,
    uned_views=2,
    ilias_instances=1,
    ilias_distractors=1,
    ilias_shards=1,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("named"), NAMED, progress=False)


@pytest.fixture(scope="module")
def info(demo: Path) -> dict:
    return json.loads((demo / "demo_info.json").read_text())


@pytest.fixture(scope="module")
def demo_landmarks(info: dict) -> tuple[EvalLandmark, ...]:
    return landmark_table(info["test_landmark_names"], "demo", info["test_city"])


# ------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "title", "normalised"),
    [
        (f"{COMMONS}H%C3%B4tel_des_Invalides", "Hôtel des Invalides", "hotel invalides"),
        (f"{COMMONS}H%25C3%25B4tel_des_Invalides", "Hôtel des Invalides", "hotel invalides"),  # encoded twice
        ("Category:Basilique_du_Sacr%C3%A9-C%C5%93ur", "Basilique du Sacré-Cœur", "basilique sacre coeur"),
        (
            "https://commons.wikimedia.org/wiki/category:Christ_Church,_Oxford",
            "Christ Church, Oxford",
            "christ church oxford",
        ),
        ("Musée d'Orsay", "Musée d'Orsay", "musee orsay"),
        ("Musée d’Orsay", "Musée d’Orsay", "musee orsay"),  # typographic apostrophe
        ("The  Bridge_of_Sighs (Oxford)", "The Bridge of Sighs (Oxford)", "bridge sighs oxford"),
        ("St_Michael_at_the_North_Gate", "St Michael at the North Gate", "saint michael north gate"),
        ("Arc de Triomphe de l'Étoile", "Arc de Triomphe de l'Étoile", "arc triomphe etoile"),
        ("http://example.org/wiki/Radcliffe_Camera", "Radcliffe Camera", "radcliffe camera"),
        ("Notre-Dame de Paris", "Notre-Dame de Paris", "notre dame paris"),
        ("ÆRØSKØBING Łódź", "ÆRØSKØBING Łódź", "aeroskobing lodz"),
    ],
)
def test_names_are_normalised(text: str, title: str, normalised: str) -> None:
    assert category_name(text) == title
    assert normalise_name(text) == normalised
    assert name_tokens(text) == tuple(normalised.split())


def test_revisited_table_has_the_eleven_landmarks_of_each_set() -> None:
    keys = {ds: [lm.key for lm in REVISITED_LANDMARKS if lm.dataset == ds] for ds in ("roxford5k", "rparis6k")}
    assert keys["roxford5k"] == [
        "all_souls",
        "ashmolean",
        "balliol",
        "bodleian",
        "christ_church",
        "cornmarket",
        "hertford",
        "keble",
        "magdalen",
        "pitt_rivers",
        "radcliffe_camera",
    ]
    assert len(keys["rparis6k"]) == 11 and all(k.startswith("paris_") for k in keys["rparis6k"])
    assert {lm.city for lm in REVISITED_LANDMARKS} == {"Oxford", "Paris"}
    by_key = {lm.key: lm for lm in REVISITED_LANDMARKS}
    assert "Hôtel des Invalides" in by_key["paris_invalides"].variants
    assert "Bridge of Sighs (Oxford)" in by_key["hertford"].variants
    assert {"Tour Eiffel", "Centre Georges Pompidou", "Basilique du Sacré-Cœur", "Musée du Louvre"} <= {
        v for lm in REVISITED_LANDMARKS for v in lm.variants
    }


@pytest.mark.skipif(not REVISITOP.is_dir(), reason="needs ../shared/data/revisitop (the official gnd files)")
def test_keys_are_the_query_prefixes_of_the_official_ground_truth() -> None:
    for name in ("roxford5k", "rparis6k"):
        gnd = load_data_pickle(REVISITOP / f"gnd_{name}.pkl")
        prefixes = {landmark_of_query(q).key for q in gnd["qimlist"] if landmark_of_query(q) is not None}
        assert prefixes == {lm.key for lm in REVISITED_LANDMARKS if lm.dataset == name}


# ---------------------------------------------------------------------------------------------- matching


def test_matcher_scores_exact_contained_and_city_named_categories() -> None:
    categories = {
        1: f"{COMMONS}H%C3%B4tel_des_Invalides",
        2: f"{COMMONS}Christ_Church,_Oxford",
        3: f"{COMMONS}Christ_Church,_New_Zealand",
        4: f"{COMMONS}Tour_Eiffel",
        5: f"{COMMONS}Pantheon,_Rome",
        6: f"{COMMONS}Defense_of_the_Realm_memorial_in_Leeds",  # one-word name, a quarter of the words: no match
        7: f"{COMMONS}Arc_de_Triomphe_du_Carrousel",
        8: f"{COMMONS}Sacr%C3%A9-C%C5%93ur,_Montmartre",
        9: f"{COMMONS}Big_Ben",
    }
    matches = match_landmark_names(categories)
    by_id = {m.landmark_id: m for m in matches}
    assert set(by_id) == {1, 2, 3, 4, 5, 7, 8}
    assert [m.landmark_id for m in matches] == [2, 8, 1, 4, 7, 3, 5]  # score, then id
    assert (by_id[1].test_landmark, by_id[1].dataset, by_id[1].category) == (
        "paris_invalides",
        "rparis6k",
        "Hôtel des Invalides",
    )
    assert by_id[1].score == 0.9 and by_id[1].exact and not by_id[1].hint
    assert by_id[2].score == 1.0 and by_id[2].hint and by_id[2].matched_name == "Christ Church"
    assert by_id[3].score == pytest.approx(0.7) and not by_id[3].exact  # the near miss ranks below
    assert by_id[4].matched_name == "Tour Eiffel" and by_id[8].hint  # Montmartre is a hint of the Sacré-Cœur
    assert by_id[7].test_landmark == "paris_triomphe" and by_id[7].score == pytest.approx(0.5 + 0.4 * 2 / 3)
    assert [m.landmark_id for m in match_landmark_names(categories, min_score=0.8)] == [2, 8, 1, 4]
    assert [m.landmark_id for m in match_landmark_names(categories, landmark_ids=[3, 9])] == [3]


def test_matcher_reads_the_category_file(tmp_path: Path) -> None:
    path = tmp_path / "train_label_to_category.csv"
    path.write_text(f'landmark_id,category\n7,{COMMONS}Radcliffe_Camera\n8,"{COMMONS}Magdalen_College,_Cambridge"\n')
    matches = match_landmark_names(path)
    assert [(m.landmark_id, m.test_landmark) for m in matches] == [(7, "radcliffe_camera"), (8, "magdalen")]


def test_planted_names_are_found_and_decoys_rank_below(
    demo: Path, info: dict, demo_landmarks: tuple[EvalLandmark, ...]
) -> None:
    matches = match_landmark_names(demo / "train" / "train_label_to_category.csv", demo_landmarks)
    planted = {int(k): v for k, v in {**info["overlap_landmarks"], **info["text_only_landmarks"]}.items()}
    decoys = {int(k): v for k, v in info["name_decoys"].items()}
    assert len(planted) == NAMED.n_overlap_landmarks + 1 and len(decoys) == 2
    found = {m.landmark_id: m.test_landmark for m in matches}
    assert {k: found.get(k) for k in planted} == planted  # every planted name, with its test landmark
    ranked = [m.landmark_id for m in matches]
    assert set(ranked[: len(planted)]) == set(planted)  # planted first ...
    assert set(ranked[len(planted) :]) == set(decoys)  # ... then the near misses
    assert min(m.score for m in matches if m.landmark_id in planted) >= 0.9
    assert max((m.score for m in matches if m.landmark_id in decoys), default=0) < 0.8
    encoded = (demo / "train" / "train_label_to_category.csv").read_text()
    assert "%C3%" in encoded and "%2C" in encoded  # URL-encoded accents and commas are among the planted names


def test_name_candidates_show_a_training_image_and_a_query(
    demo: Path, demo_landmarks: tuple[EvalLandmark, ...]
) -> None:
    matches = match_landmark_names(demo / "train" / "train_label_to_category.csv", demo_landmarks)
    train_set, test_set = gldv2_train(demo), RevisitedDataset.from_dir(demo / "demo")
    bare = name_candidates(matches)
    assert all(c.source == "text" and c.train_image is None and c.query == "" for c in bare)
    assert [c.score for c in bare] == [m.score for m in matches] and all(math.isnan(c.similarity) for c in bare)
    shown = name_candidates(matches, train_set=train_set, test_set=test_set, landmarks=demo_landmarks)
    for c, m in zip(shown, matches, strict=True):
        assert c.train_image is not None and c.train_image.is_file()
        assert c.query.startswith(m.test_landmark + "_") and c.test_image == test_set.image_path(c.query)
        assert c.test_box is not None and c.matched_landmark == m.test_landmark and c.category == m.category


def test_query_landmarks_follow_the_positives(demo: Path, demo_landmarks: tuple[EvalLandmark, ...]) -> None:
    test_set = RevisitedDataset.from_dir(demo / "demo")
    assigned = query_landmarks(test_set, demo_landmarks)
    assert assigned == {q: q.rsplit("_", 1)[0] for q in test_set.qimlist}
    with pytest.raises(ValueError, match="non-empty list"):
        landmark_table({"tower_00": []}, "demo")


@pytest.mark.skipif(not REVISITOP.is_dir(), reason="needs ../shared/data/revisitop (the official gnd files)")
def test_generic_revisited_queries_get_their_landmark_from_the_positives() -> None:
    for name, checks in {
        "roxford5k": {"oxford_002985": "all_souls", "bodleian_000132": "radcliffe_camera", "keble_000245": "keble"},
        "rparis6k": {"paris_general_002985": "paris_eiffel", "paris_defense_000038": "paris_triomphe"},
    }.items():
        test_set = RevisitedDataset.from_dir(REVISITOP, name)
        assigned = query_landmarks(test_set)
        assert len(assigned) == 70 and None not in assigned.values()
        assert {q: assigned[q] for q in checks} == checks
        assert len(set(assigned.values())) == 11
