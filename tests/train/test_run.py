"""A training run from a config: its run record names the training split by the checksums of the files read."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from irlib.io import sha256_file
from irlib.results import load_runs
from irlib.train.config import TrainConfig
from irlib.train.run import train


def tiny_config(tmp_path, **fields) -> TrainConfig:
    """One or two CPU steps of GeM/EfficientNet-Lite0 (random init) with CosFace on 32 px images."""
    defaults = dict(
        method="gem",
        backbone="efficientnet_lite0",
        pretrained=False,
        loss="cosface",
        image_size=32,
        global_batch=4,
        max_steps=1,
        warmup_epochs=0,
        out_dir=str(tmp_path / "run"),
        channels_last=False,
    )
    return TrainConfig(**(defaults | fields))


def test_the_run_record_holds_the_checksums_of_the_gldv2_csv_and_the_exclusion_file(tmp_path):
    root = tmp_path / "gldv2"
    rows = []
    for landmark in (7, 8, 9):
        ids = [f"{landmark:x}{i:x}" + "0" * 14 for i in range(2)]
        for n, image_id in enumerate(ids):
            path = root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40, 3), 20 * landmark + n, np.uint8)).save(path)
        rows.append(f"{landmark},{' '.join(ids)}")
    csv = root / "train" / "train_clean.csv"
    csv.write_text("landmark_id,images\n" + "\n".join(rows) + "\n")
    exclude = tmp_path / "exclusions.txt"
    exclude.write_text("9  # planted in the test set\n")
    train(tiny_config(tmp_path, dataset="gldv2", data_dir=str(root), exclude=str(exclude)))
    dataset = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]
    digests = [sha256_file(csv), sha256_file(exclude)]
    assert dataset["train_split_files"] == {str(csv): digests[0], str(exclude): digests[1]}  # the files read
    assert dataset["train_split_sha256"] == hashlib.sha256("\n".join(digests).encode()).hexdigest()
    assert dataset["name"] == "gldv2" and dataset["gnd_sha256"] is None  # no test ground truth in a training
    assert load_runs(tmp_path / "run")["train_split_sha256"].tolist() == [dataset["train_split_sha256"]]


def test_uned_training_runs_from_its_info_files(tmp_path):
    for domain in ("cars", "sop"):
        (tmp_path / "uned" / "info_files" / domain).mkdir(parents=True)
        entries = []
        for i in range(4):
            rel = f"{domain}/img_{i}.jpg"
            (tmp_path / "uned" / "images" / domain).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(tmp_path / "uned" / "images" / rel)
            entries.append({"path": rel, "class_id": i % 2 if domain == "cars" else [i % 2, 7]})
        (tmp_path / "uned" / "info_files" / domain / "train.json").write_text(json.dumps(entries))
    cfg = tiny_config(tmp_path, dataset="uned", domains=["cars", "sop"], data_dir=str(tmp_path / "uned"), max_steps=2)
    assert train(cfg)["step"] == 2
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["num_classes"] == 4  # 2 classes x 2 domains
    record = load_runs(tmp_path / "run", kind="train").iloc[0]  # the run record of a training
    assert record["weights_sha256"] == sha256_file(tmp_path / "run" / "model.pth") and record["step"] == 2
    info_files = [tmp_path / "uned" / "info_files" / d / "train.json" for d in ("cars", "sop")]
    split = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]["train_split_files"]
    assert split == {str(p): sha256_file(p) for p in info_files}  # the split definition the run read
