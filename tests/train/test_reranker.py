"""Reranker training: pairs from the landmark labels with hard negatives of the frozen global model, every trainable
part of the reranker trains, exact resume, the run folder and its reranker file; λ, γ chosen on held-out landmarks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from irlib.data.revisited import RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.eval.local_features import Positions, select_codes
from irlib.models.ames import load_reranker
from irlib.train.reranker import (
    GAMMAS,
    LAMBDAS,
    RERANKER,
    RerankerTrainConfig,
    _Data,
    _Run,
    frozen_model,
    hard_negative_pools,
    reranker_study,
    synthetic_pairs,
    train_reranker,
    trained_reranker,
)

SMALL = {
    "model_dim": 32,
    "heads": 2,
    "layers": 2,
    "ffn": 32,
    "detector_hidden": 8,
    "n_query": 8,
    "n_db": 6,
    "holdout_classes": 2,
    "classes_per_batch": 3,
    "samples_per_class": 2,
    "negatives": 2,
    "hard_pool": 4,
    "pretrain_steps": 0,
}


def fake_data(classes: int = 8, per_class: int = 4, positions: int = 30, channels: int = 160) -> _Data:
    """Images of ``classes`` landmarks: each image shows half of its landmark's 20 part vectors, noisy, among
    clutter; global descriptors are noisy class centres. The last two landmarks are held out."""
    rng = np.random.default_rng(0)
    parts = rng.standard_normal((classes, 20, channels))
    labels = np.repeat(np.arange(classes), per_class)
    feats = []
    for c in labels:
        shown = parts[c, rng.choice(20, 10, replace=False)] + 0.3 * rng.standard_normal((10, channels))
        feats.append(np.concatenate([shown, rng.standard_normal((positions - 10, channels))]))
    offsets = np.arange(len(labels) + 1) * positions
    centres = rng.standard_normal((classes, 16))
    descriptors = centres[labels] + rng.standard_normal((len(labels), 16))
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    held = labels >= classes - 2
    return _Data(
        Positions(np.concatenate(feats).astype(np.float16), offsets),
        descriptors.astype(np.float32),
        labels,
        np.flatnonzero(~held),
        np.flatnonzero(held),
    )


def test_hard_negatives_are_the_most_similar_images_of_other_landmarks():
    d = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    pools = hard_negative_pools(d, labels, 2)
    np.testing.assert_array_equal(pools[0], [2, 4])
    assert all(labels[pools[i]].tolist().count(labels[i]) == 0 for i in range(5))
    with pytest.raises(ValueError, match="hard_pool=4 exceeds"):
        hard_negative_pools(d, labels, 4)


def test_batches_pair_landmark_mates_and_hard_negatives_deterministically():
    data = fake_data()
    run = _Run(RerankerTrainConfig(**SMALL), data, 160)
    images, labels, q_at, x_at = run.batch(5)
    queries = np.unique(images[q_at])
    assert len(queries) == 3 * 2 and set(queries) <= set(data.train)  # held-out landmarks never train
    for q in queries:
        pairs = images[x_at][images[q_at] == q]
        mates = [x for x in pairs if data.labels[x] == data.labels[q]]
        others = [x for x in queries if data.labels[x] != data.labels[q]]
        hard = [x for x in pairs if x not in mates and x not in others]
        assert len(mates) == 1 and mates[0] != q
        assert set(others) <= set(pairs)  # the batch's other landmarks (batch_negatives)
        assert set(hard) <= set(run.pools[np.searchsorted(data.train, q)]) and len(hard) <= 2
    again = run.batch(5)
    assert all(np.array_equal(a, b) for a, b in zip(again, (images, labels, q_at, x_at), strict=True))
    plain = _Run(RerankerTrainConfig(**SMALL | {"batch_negatives": False}), data, 160).batch(5)
    same = plain[1][plain[2]] == plain[1][plain[3]]
    assert same.sum() == 3 * 2 * 1 and (~same).sum() == 3 * 2 * 2  # 1 mate and 2 hard negatives each


def test_one_step_changes_every_trainable_parameter_and_only_those():
    run = _Run(RerankerTrainConfig(**SMALL), fake_data(), 160)
    run.init_weights()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    record = run.train_step()
    assert record["step"] == 1 and np.isfinite(record["loss"])
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert {
        "detector.conv1.weight",
        "binariser.weight",
        "project.0.weight",
        "matcher.token",
        "matcher.classifier.weight",
    } <= trainable
    after = run.model.state_dict()
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert not unchanged
    # frozen on purpose: the bias a BatchNorm cancels, and the binariser's centring mean (a buffer)
    assert torch.equal(before["detector.conv1.bias"], after["detector.conv1.bias"])
    assert torch.equal(before["binariser.mu"], after["binariser.mu"])


def test_resumed_training_continues_exactly(tmp_path):
    cfg = RerankerTrainConfig(**SMALL)
    data = fake_data()
    straight = _Run(cfg, data, 160)
    straight.init_weights()
    for _ in range(4):
        straight.train_step()
    first = _Run(cfg, data, 160)
    first.init_weights()
    for _ in range(2):
        first.train_step()
    first.save(tmp_path / "checkpoint.pt")
    resumed = _Run(cfg, data, 160)
    resumed.load(tmp_path / "checkpoint.pt")
    for _ in range(2):
        resumed.train_step()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    changed = _Run(RerankerTrainConfig(**SMALL | {"negatives": 1}), data, 160)
    with pytest.raises(ValueError, match="changed training fields.*negatives"):
        changed.load(tmp_path / "checkpoint.pt")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    config = DemoConfig(
        n_test_landmarks=2,
        queries_per_landmark=1,
        n_distractors=2,
        n_train_landmarks=6,
        n_overlap_landmarks=1,
        train_views_per_landmark=3,
        image_size=(128, 96),
    )
    return make_demo_data(tmp_path_factory.mktemp("demo"), config, progress=False)


def test_a_run_folder_holds_config_log_checkpoint_and_a_loadable_reranker(demo_root, tmp_path):
    overlap = sorted(int(k) for k in json.loads((demo_root / "demo_info.json").read_text())["overlap_landmarks"])
    cfg = RerankerTrainConfig(
        **SMALL | {"pretrain_steps": 1},
        data_dir=str(demo_root),
        exclude=overlap,
        image_size=96,
        scales=[1.0, 2.0],
        steps=3,
        log_every=2,
        checkpoint_every=2,
        M=10,
        out_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        pretrained=False,  # any frozen model: its features only have to be real feature maps
    )
    torch.manual_seed(0)
    model = frozen_model(cfg)
    summary = train_reranker(cfg, model=model, progress=False)
    out = tmp_path / "run"
    assert RerankerTrainConfig.from_yaml(out / "config.yaml") == cfg
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 3]
    reranker, meta = load_reranker(out / RERANKER)
    assert (meta["lam"], meta["gamma"]) == (summary["lam"], summary["gamma"])
    assert meta["lam"] in LAMBDAS and meta["gamma"] in GAMMAS
    assert meta["train_config"] == cfg.to_dict() and meta["extract_settings"]["image_size"] == 96
    selection = json.loads((out / "selection.json").read_text())
    assert len(selection["grid"]) == len(LAMBDAS) * len(GAMMAS) and selection["queries"] == 2 * 3
    assert selection["best_map"] == max(g["map"] for g in selection["grid"])
    assert summary["bytes_per_db_image"] == 6 * 16 + 2 == reranker.config.bytes_per_db_image
    assert set(meta["holdout_labels"]).isdisjoint(overlap)
    with pytest.raises(FileExistsError, match="checkpoint.pt exists"):
        train_reranker(cfg, model=model, progress=False)
    assert train_reranker(cfg, model=model, resume=True, progress=False)["steps"] == 3  # a finished run only re-selects
    with pytest.raises(ValueError, match="unknown|expected reranker training fields"):
        (out / "bad.yaml").write_text(yaml.safe_dump({"stepz": 3}))
        RerankerTrainConfig.from_yaml(out / "bad.yaml")

    stamp = (out / RERANKER).stat().st_mtime_ns
    assert trained_reranker(cfg, model=model, progress=False) == out / RERANKER
    assert (out / RERANKER).stat().st_mtime_ns == stamp  # the same configuration: reused, not trained again
    other = dataclasses.replace(cfg, steps=4)
    trained_reranker(other, model=model, progress=False)  # another configuration: trained again from scratch
    assert RerankerTrainConfig.from_yaml(out / "config.yaml") == other
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    torch.manual_seed(0)  # the same random model again: the reranker reads its feature maps
    table = reranker_study(other, RevisitedDataset.from_dir(demo_root / "demo"), progress=False)  # reuses the run
    assert list(table.index) == ["none", "alpha_qe", "superglobal", "learned"]
    assert table.loc["learned", "db_bytes_per_image"] == table.loc["none", "db_bytes_per_image"] + 6 * 16 + 2
    assert table.attrs["metrics"]["learned"]["settings"]["rerank"]["params"]["reranker"] == str(out / RERANKER)


def test_synthetic_pairs_plant_noisy_copies_in_positives_only():
    q, q_pad, x, x_pad, target = synthetic_pairs(16, 12, 8, 128, seed=0, step=3)
    assert q.shape == (16, 12, 128) and x.shape == (16, 8, 128) and target.tolist() == [0.0, 1.0] * 8
    assert (~q_pad).sum(1).min() >= 3 and (~x_pad).sum(1).min() >= 2
    best = torch.stack([((x[i] @ q[i][~q_pad[i]].T) / 128).max(1).values for i in range(16)])  # (16, 8)
    best = best.masked_fill(x_pad, -1)
    copies = (best > 0.45).sum(1)
    assert (copies[1::2] >= 1).all() and (copies[0::2] == 0).all()
    again = synthetic_pairs(16, 12, 8, 128, seed=0, step=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (q, q_pad, x, x_pad, target), strict=True))


def test_config_refuses_impossible_settings():
    with pytest.raises(ValueError, match="pretrain_steps"):
        RerankerTrainConfig(steps=10, pretrain_steps=10)
    with pytest.raises(ValueError, match="samples_per_class"):
        RerankerTrainConfig(samples_per_class=1)
    with pytest.raises(ValueError, match="in_dim"):
        RerankerTrainConfig(bits=256).ames_config(in_dim=128)


def test_training_teaches_the_matcher_to_recognise_landmarks_it_never_saw():
    """On images of landmark parts among clutter (:func:`fake_data`), 150 steps (50 on synthetic codes) take the
    AUC of the logits of held-out landmarks' pairs (same landmark vs not) from chance to well above it. The demo's
    mAP gain needs minutes of training: ``benchmarks/bench_learned_rerank.py --quality`` measures it."""
    data = fake_data()
    cfg = RerankerTrainConfig(**SMALL | {"pretrain_steps": 50, "steps": 150, "lr": 2e-3})
    run = _Run(cfg, data, 160)
    run.init_weights()

    def held_out_auc() -> float:
        run.model.eval()
        everything = [data.positions.image(i) for i in range(len(data.labels))]
        queries = run.model.encode(*select_codes(run.model, iter(everything), cfg.n_query).tensors())
        database = run.model.encode(*select_codes(run.model, iter(everything), cfg.n_db).tensors())
        a, b = (v.ravel() for v in np.meshgrid(data.holdout, data.holdout, indexing="ij"))
        a, b = a[a != b], b[a != b]
        with torch.no_grad():
            logits = run.model.match(queries.take(torch.from_numpy(a)), database.take(torch.from_numpy(b))).numpy()
        same = data.labels[a] == data.labels[b]
        run.model.train()
        return float((logits[same][:, None] > logits[~same][None, :]).mean())

    before = held_out_auc()
    while run.step < cfg.steps:
        run.train_step()
    assert before < 0.6 and held_out_auc() > 0.7
