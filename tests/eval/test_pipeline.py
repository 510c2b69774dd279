"""End to end on generated demo data: the offline-pretrained model retrieves far better than a random one."""

from __future__ import annotations

import pytest
import torch

from irlib.data.revisited import RevisitedDataset
from irlib.data.synthetic import DemoConfig, make_demo_data
from irlib.eval.extract import ExtractConfig
from irlib.eval.pipeline import evaluate_model, summary_table
from irlib.models import create_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> RevisitedDataset:
    config = DemoConfig(n_test_landmarks=4, views_per_landmark=10, n_distractors=10, n_train_landmarks=2)
    root = make_demo_data(tmp_path_factory.mktemp("demo"), config, progress=False)
    return RevisitedDataset.from_dir(root / "demo")


def test_pretrained_beats_random_init_by_far(demo):
    cfg = ExtractConfig(image_size=256, scales=(1.0,))
    pretrained = evaluate_model(create_model("gem", backbone="efficientnet_lite0", pretrained=True), demo, cfg)
    torch.manual_seed(0)
    random_init = evaluate_model(create_model("gem", backbone="efficientnet_lite0"), demo, cfg)
    table = summary_table({"pretrained": pretrained.metrics, "random": random_init.metrics})
    assert table.loc["pretrained", ("medium", "mAP")] > table.loc["random", ("medium", "mAP")] + 30, table
    assert pretrained.metrics["easy"]["map"] > pretrained.metrics["hard"]["map"]  # the difficulty labels mean it
    assert pretrained.per_query.shape == (demo.n_queries, 3)
    assert pretrained.scores.shape == (demo.n_queries, demo.n_db)
