"""Shared fixtures: the reference material in ``../shared`` (skipped with a reason when absent)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file under ``../shared``; skips the calling test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared holds the team's reference material)")
    return path


@pytest.fixture(scope="session")
def revisitop_dir() -> Path:
    """The folder with the real ``gnd_roxford5k.pkl`` and ``gnd_rparis6k.pkl``."""
    return shared_path("data", "revisitop")


@pytest.fixture(scope="session")
def oracle_cases() -> dict:
    """Outputs of the unmodified official revisitop ``compute_map`` (see its README)."""
    with open(shared_path("data", "oracle", "revisited_oracle_cases.pkl"), "rb") as f:
        return pickle.load(f)


@pytest.fixture
def tiny_revisited(tmp_path: Path) -> Path:
    """A 6-image revisited-format folder (two queries, images of two sizes) written in the official layout."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    (root / "jpg").mkdir(parents=True)
    names = [f"db_{i}" for i in range(6)]
    for i, name in enumerate(names + ["q_0", "q_1"]):
        w, h = (96, 64) if i % 2 else (64, 96)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "jpg" / f"{name}.jpg")
    gnd = [
        {"bbx": [4.5, 8.2, 60.5, 50.0], "easy": [0, 2], "hard": [4], "junk": [1]},
        {"bbx": [0.0, 0.0, 96.0, 64.0], "easy": [1], "hard": [3, 5], "junk": []},
    ]
    with open(root / "gnd_tiny.pkl", "wb") as f:
        pickle.dump({"imlist": names, "qimlist": ["q_0", "q_1"], "gnd": gnd}, f)
    return root


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo folder with every protocol: revisited test set, GLDv2-layout training split, UnED (3 domains)
    and ILIAS (tar shards of distractors)."""
    from irlib.data.synthetic import DemoConfig, make_demo_data

    config = DemoConfig(
        n_test_landmarks=2,
        queries_per_landmark=1,
        n_distractors=2,
        n_train_landmarks=3,
        n_overlap_landmarks=0,
        uned_train_classes=3,
        uned_val_classes=1,
        uned_test_classes=3,
        uned_index_only_classes=1,
        uned_views=3,
        ilias_instances=3,
        ilias_distractors=6,
        ilias_shards=2,
    )
    return make_demo_data(tmp_path_factory.mktemp("small_demo"), config, progress=False)


def oracle_model_case(filename: str) -> tuple[dict, dict, Any]:
    """An official-model record of ``../shared/data/oracle/models/``: ``(record, official_state_dict, x)``.

    The weights are rebuilt from the manifest with ``../shared/tools/random_weights.py`` and checked against
    the record's fingerprint; ``x`` is the recorded input (channel order as the record's README says).
    """
    import importlib.util

    import torch

    path = shared_path("data", "oracle", "models", filename)
    spec = importlib.util.spec_from_file_location("random_weights", shared_path("tools", "random_weights.py"))
    rw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rw)
    rec = torch.load(path, weights_only=True)
    entries = rw.load_manifest_entries(shared_path("reference", "manifests", rec["manifest"]), rec["variant"])
    state_dict = rw.random_state_dict(entries, rec["weight_seed"])
    assert rw.state_dict_fingerprint(state_dict) == rec["weights_sha256"], "regenerated weights differ"
    x = torch.randn(*rec["input_shape"], generator=torch.Generator().manual_seed(rec["input_seed"]))
    return rec, state_dict, x
