"""Tests for the demo generator's UnED- and ILIAS-format outputs, read back through irlib's own loaders."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irlib.data import synthetic
from irlib.data.ilias import IliasDataset, read_bbox_file
from irlib.data.registry import load_dataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.data.uned import KNN_SPLITS, uned_knn, uned_split
from irlib.eval.metrics import uned_merged_metrics

DOMAINS = ["cars", "inshop", "gldv2"]
CONFIG = DemoConfig(
    seed=5,
    n_test_landmarks=1,
    queries_per_landmark=1,
    views_per_landmark=2,
    n_distractors=0,
    n_train_landmarks=0,
    n_overlap_landmarks=0,
    image_size=(64, 64),
    uned_train_classes=3,
    uned_val_classes=2,
    uned_test_classes=4,
    uned_index_only_classes=2,
    uned_views=3,
    ilias_instances=5,
    ilias_distractors=9,
    ilias_shards=3,
)
# Official groups (ilias evaluation/src/dataset.py, lines 8-14).
CLUTTER_GROUPS = [(0, 18), (18, 33), (33, 53), (53, float("inf"))]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("universal"), CONFIG, progress=False)


@pytest.fixture(scope="module")
def ilias(root: Path) -> IliasDataset:
    ids = root / "ilias" / "image_ids"
    return IliasDataset.from_dir(root / "ilias", distractor_ids=ids / "distractor_ids.txt.gz", id_dir=ids)


def _info_file(root: Path, domain: str, split: str) -> list[dict]:
    return json.loads((root / "uned" / "info_files" / domain / f"{split}.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ UnED


def test_uned_knn_reads_throw_first_and_separate_index_domains(root: Path) -> None:
    knn = uned_knn(root / "uned", domains=DOMAINS)
    assert knn.throw_first == {"cars": True, "inshop": False, "gldv2": False}
    n, views = CONFIG.uned_test_classes, CONFIG.uned_views
    assert knn.info["queries"] == {"cars": n * views, "inshop": n, "gldv2": n}
    separate = n * (views - 1) + CONFIG.uned_index_only_classes * views
    assert knn.info["index_images"] == {"cars": n * views, "inshop": separate, "gldv2": separate}
    # A throw-first query is its own index entry; the others are not in the index at all.
    for i, pos in enumerate(knn.query_in_index):
        if knn.query_domains[i] == "cars":
            assert knn.index_paths[pos] == knn.query_paths[i] and knn.index_labels[pos] == knn.query_labels[i]
        else:
            assert pos == -1 and knn.query_paths[i] not in set(knn.index_paths)
    # Every query has another image of its class, in its domain, in the index.
    index = list(zip(knn.index_labels, knn.index_domains, range(len(knn.index_labels)), strict=True))
    for i, (label, domain) in enumerate(zip(knn.query_labels, knn.query_domains, strict=True)):
        assert [j for lab, d, j in index if lab == label and d == domain and j != knn.query_in_index[i]]


def test_uned_images_exist_decode_and_follow_the_source_layouts(root: Path) -> None:
    knn = uned_knn(root / "uned", domains=DOMAINS)
    patterns = {
        "cars": r"cars/car_ims/\d{6}\.jpg",
        "inshop": r"inshop/img/id_\d{8}/01_\d_(front|side|back|full|additional)\.jpg",
        "gldv2": r"gldv2/images/(train|test|index)/([0-9a-f])/([0-9a-f])/([0-9a-f])/\2\3\4[0-9a-f]{13}\.jpg",
    }
    for split in ("train", "val", "test", "index"):
        for domain in DOMAINS:
            path = root / "uned" / "info_files" / domain / f"{split}.json"
            for entry in json.loads(path.read_text()) if path.exists() else []:
                assert re.fullmatch(patterns[domain], entry["path"]), entry
    for path in [*knn.query_paths, *knn.index_paths]:
        with Image.open(path) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB" and all(96 <= s <= 160 for s in img.size)


def test_uned_split_reads_the_training_and_validation_classes(root: Path) -> None:
    train = uned_split(root / "uned", domains=DOMAINS, split="train")
    n_train = CONFIG.uned_train_classes
    assert len(train) == len(DOMAINS) * n_train * CONFIG.uned_views
    assert len(np.unique(train.labels)) == len(DOMAINS) * n_train
    assert train.info["domain_offsets"] == {"cars": 0, "inshop": n_train, "gldv2": 2 * n_train}
    assert train.num_classes == len(DOMAINS) * n_train
    val = uned_knn(root / "uned", domains=DOMAINS, split="val")
    assert all(val.throw_first.values()) and len(val.query_paths) == len(DOMAINS) * CONFIG.uned_val_classes * 3
    assert not {e["path"] for e in _info_file(root, "cars", "val")} & {
        e["path"] for e in _info_file(root, "cars", "train")
    }


def test_class_ids_restart_in_every_domain_and_overlap_across_domains(root: Path) -> None:
    test_ids = {}
    for domain in DOMAINS:
        assert min(e["class_id"] for e in _info_file(root, domain, "train")) == 0
        index_split = KNN_SPLITS["test"][domain][1]
        ids = {e["class_id"] for e in _info_file(root, domain, "test") + _info_file(root, domain, index_split)}
        train_ids = {e["class_id"] for e in _info_file(root, domain, "train")}
        assert not ids & train_ids  # test classes are new classes
        test_ids[domain] = ids
    shared = set.intersection(*test_ids.values())
    assert len(shared) >= CONFIG.uned_test_classes
    # The loader gives the shared raw ids different labels per domain.
    knn = uned_knn(root / "uned", domains=DOMAINS)
    offsets = knn.info["domain_offsets"]
    assert len(set(offsets.values())) == len(DOMAINS)
    labels = {
        d: {lab for lab, dom in zip(knn.index_labels, knn.index_domains, strict=True) if dom == d} for d in DOMAINS
    }
    assert not labels["cars"] & labels["inshop"] and not labels["inshop"] & labels["gldv2"]


def test_a_neighbour_with_the_same_class_id_in_another_domain_is_not_a_hit(root: Path) -> None:
    knn = uned_knn(root / "uned", domains=DOMAINS)
    offsets = knn.info["domain_offsets"]
    raw_query = [lab - offsets[d] for lab, d in zip(knn.query_labels, knn.query_domains, strict=True)]
    raw_index = [lab - offsets[d] for lab, d in zip(knn.index_labels, knn.index_domains, strict=True)]
    scores = np.zeros((len(raw_query), len(raw_index)))
    for i, (raw, domain) in enumerate(zip(raw_query, knn.query_domains, strict=True)):
        impostor = next(j for j, r in enumerate(raw_index) if r == raw and knn.index_domains[j] != domain)
        scores[i, impostor] = 2.0  # the top neighbour: same raw id, other domain
        if knn.query_in_index[i] >= 0:
            scores[i, knn.query_in_index[i]] = 3.0  # a throw-first query finds itself first
    metrics = uned_merged_metrics(
        scores, knn.query_labels, knn.query_domains, knn.index_labels, knn.index_domains, knn.throw_first
    )
    assert metrics["R@1"] == 0.0


def test_the_registry_finds_the_demo_uned_set(root: Path) -> None:
    knn = load_dataset("uned-knn", root, domains=DOMAINS)
    assert knn.domains == tuple(DOMAINS)
    assert len(load_dataset("uned", root, domains=DOMAINS, split="val")) == len(DOMAINS) * 2 * 3


# ----------------------------------------------------------------------------------------------- ILIAS


def test_ilias_core_reads_with_the_official_id_files(root: Path, ilias: IliasDataset) -> None:
    counts = json.loads((root / "demo_info.json").read_text())["counts"]["ilias"]
    assert len(ilias.instances) == counts["instances"] == CONFIG.ilias_instances
    assert len(ilias.image_queries) == counts["image_queries"] and len(ilias.positives) == counts["positives"]
    assert len(ilias.text_queries) == CONFIG.ilias_instances and all(t.text for t in ilias.text_queries)
    assert len(ilias.distractor_ids) == CONFIG.ilias_distractors
    for instance in ilias.instances:
        number = re.fullmatch(r"[a-z]+_[a-z]+_(\d{3})", instance).group(1)
        queries = [q.id for q in ilias.image_queries if q.instance == instance]
        positives = ilias.positives_of(instance)
        assert 1 <= len(queries) <= 2 and 2 <= len(positives) <= 6
        assert all(re.fullmatch(rf"{instance}/query/Q{number}_\d\d\.jpg", q) for q in queries)
        assert all(re.fullmatch(rf"{instance}/pos/P{number}_\d\d\.jpg", p) for p in positives)
    rows = (root / "ilias" / "image_ids" / "image_query_ids.txt").read_text().splitlines()
    assert all(re.fullmatch(r"[^,]+\.jpg,\d+ \d+ \d+ \d+", row) for row in rows)


def test_ilias_boxes_scales_and_clutter_are_realistic(root: Path, ilias: IliasDataset) -> None:
    taxonomy = json.loads((root / "ilias" / "misc" / "taxonomy.json").read_text())
    pairs = set(taxonomy.get("fashion", {}).get("jewelry", {}).get("other", []))  # earrings: one box each
    assert all(len(q.boxes) == (2 if q.instance in pairs else 1) for q in ilias.image_queries)
    for item in [*ilias.image_queries, *ilias.positives]:
        with Image.open(ilias.path(item.id)) as img:
            w, h = img.size
        boxes = item.boxes
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
    for q in ilias.image_queries:  # clean backgrounds, the object large
        with Image.open(ilias.path(q.id)) as img:
            w, h = img.size
        x1, y1, x2, y2 = q.boxes[:, 0].min(), q.boxes[:, 1].min(), q.boxes[:, 2].max(), q.boxes[:, 3].max()
        assert (x2 - x1) * (y2 - y1) > 0.1 * w * h
    info = ilias.id_files.positive_info
    assert all(0 < scale <= 1 and clutter >= 0 for scale, clutter in info.values())
    for p in ilias.positives:
        if len(p.boxes):
            with Image.open(ilias.path(p.id)) as img:
                w, h = img.size
            union = (p.boxes[:, 2].max() - p.boxes[:, 0].min()) * (p.boxes[:, 3].max() - p.boxes[:, 1].min())
            assert info[p.id][0] == pytest.approx(union / (w * h))
    groups = {next(g for g, (lo, hi) in enumerate(CLUTTER_GROUPS) if lo <= c < hi) for _, c in info.values()}
    assert len(groups) >= 2
    with_box = [len(p.boxes) > 0 for p in ilias.positives]
    assert sum(with_box) >= len(with_box) / 2  # the bbox file of a positive is optional, most have one


def test_query_bbox_files_hold_integer_xywh_lines(root: Path, ilias: IliasDataset) -> None:
    for q in ilias.image_queries:
        path = root / "ilias" / "ilias_core" / q.id.replace(".jpg", "_bbox.txt")
        lines = path.read_text().splitlines()
        assert lines and all(re.fullmatch(r"\d+ \d+ \d+ \d+", line) for line in lines)
        assert np.array_equal(read_bbox_file(path), q.boxes)


def test_taxonomy_has_three_levels_over_the_instances(root: Path, ilias: IliasDataset) -> None:
    taxonomy = json.loads((root / "ilias" / "misc" / "taxonomy.json").read_text())
    names = [
        name
        for subs in taxonomy.values()
        for subsubs in subs.values()
        for instances in subsubs.values()
        for name in instances
    ]
    assert sorted(names) == sorted(ilias.instances)


def test_distractor_shards_are_webdataset_tars_matching_the_id_list(root: Path) -> None:
    ids_dir = root / "ilias" / "image_ids"
    with gzip.open(ids_dir / "distractor_ids.txt.gz", "rt") as f:
        listed = f.read().splitlines()
    shards = sorted((root / "ilias" / "yfcc100m").iterdir())
    assert [s.name for s in shards] == [f"{i:06d}.tar" for i in range(CONFIG.ilias_shards)]
    found = []
    for shard in shards:
        assert tarfile.is_tarfile(shard)
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            assert members and all(m.isfile() and m.mtime == 0 for m in members)
            for m in members:
                key, ext = m.name.split(".")
                assert re.fullmatch(r"\d{8}", key) and ext == "jpg"
                with Image.open(io.BytesIO(tar.extractfile(m).read())) as img:
                    img.load()
                    assert img.format == "JPEG" and img.mode == "RGB"
                found.append(f"{shard.name}/{key}")
    assert found == listed
    keys = [i.split("/")[1] for i in listed]
    assert len(set(keys)) == len(keys)
    mini = (ids_dir / "mini_ilias_yfcc100m_ids.txt").read_text().splitlines()
    assert mini and set(mini) < set(keys)


# ------------------------------------------------------------------------------------------- the build


def test_two_builds_are_byte_identical(root: Path, tmp_path: Path) -> None:
    again = make_demo_data(tmp_path, CONFIG, progress=False)
    first, second = _files(root), _files(again)
    assert first == second
    assert any(k.startswith("uned/images/") for k in first) and any(k.endswith(".tar") for k in first)


def test_every_uned_domain_the_config_accepts_has_a_renderer() -> None:
    assert tuple(synthetic._UNED_RENDERERS) == synthetic._UNED_DOMAINS
    assert set(synthetic._UNED_DOMAINS) <= set(KNN_SPLITS["test"])


@pytest.mark.parametrize(
    "bad",
    [
        {"uned_domains": ()},
        {"uned_domains": ("cars", "cars")},
        {"uned_domains": ("met",)},
        {"uned_train_classes": 0},
        {"uned_index_only_classes": -1},
        {"uned_views": 1},
        {"ilias_instances": 0},
        {"ilias_instances": 31},
        {"ilias_shards": 0},
        {"ilias_distractors": 2, "ilias_shards": 3},
    ],
)
def test_invalid_universal_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**bad)
