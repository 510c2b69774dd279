"""Multi-scale extraction: preprocessing rules, batching equivalence, caching, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irlib.data.images import ImageLoadError, TarMember
from irlib.data.revisited import RevisitedDataset
from irlib.eval.extract import (
    ExtractConfig,
    FeatureCache,
    _image_states,
    _Images,
    extract_descriptors,
    extract_revisited,
    multiscale_descriptor,
)
from irlib.models import create_model
from tests.data.test_images import write_shard


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("gem", backbone="efficientnet_lite0")


def test_images_are_shrunk_never_enlarged_and_queries_keep_the_full_image_scale(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    small = _Images(ds.db_paths[:2], None, ExtractConfig(image_size=48), mean, std, ds.name)
    assert small[0][1][0].shape == (3, 48, 32) and small[1][1][0].shape == (3, 32, 48)
    large = _Images(ds.db_paths[:1], None, ExtractConfig(image_size=500), mean, std, ds.name)
    assert large[0][1][0].shape == (3, 96, 64)
    # query 0: box [4.5, 8.2, 60.5, 50.0] rounds to a 56 x 42 crop of a 96 x 64 image; factor 48/96 = 0.5
    queries = _Images(ds.query_paths[:1], [ds.gnd[0]["bbx"]], ExtractConfig(image_size=48), mean, std, ds.name)
    assert queries[0][1][0].shape == (3, 21, 28)


def test_normalisation_uses_the_model_statistics(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    _, (x,) = _Images(ds.db_paths[:1], None, ExtractConfig(image_size=500), (0.5,) * 3, (0.25,) * 3, ds.name)[0]
    raw = np.asarray(Image.open(ds.db_paths[0]).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), (raw - 0.5) / 0.25, atol=1e-6)


def test_multiscale_descriptor_is_the_normalised_mean_of_normalised_scales(model):
    x = torch.randn(2, 3, 64, 64)
    scales = (1 / math.sqrt(2), 1.0, math.sqrt(2))
    with torch.inference_mode():
        got = multiscale_descriptor(model.eval(), [x], scales)
        parts = [
            torch.nn.functional.normalize(
                model(torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)),
                dim=-1,
            )
            for s in scales
        ]
    expected = torch.nn.functional.normalize(sum(parts), dim=-1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_batching_and_workers_do_not_change_descriptors(tiny_revisited, model):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    one = extract_descriptors(model, ds.db_paths, cfg=ExtractConfig(image_size=64, batch_size=1), progress=False)
    many = extract_descriptors(
        model, ds.db_paths, cfg=ExtractConfig(image_size=64, batch_size=4, num_workers=2), progress=False
    )
    assert one.shape == (6, model.feat_dim) and one.dtype == np.float32
    np.testing.assert_allclose(many, one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)


def test_fp16_storage(tiny_revisited, model):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=64, scales=(1.0,), fp16=True)
    assert extract_descriptors(model, ds.db_paths[:2], cfg=cfg, progress=False).dtype == np.float16


def test_cache_returns_the_same_descriptors_without_running_the_model(tiny_revisited, model, tmp_path, monkeypatch):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=64, scales=(1.0,))
    q, x = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although the descriptors were cached")

    monkeypatch.setattr("irlib.eval.extract.extract_descriptors", fail)
    q2, x2 = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(AssertionError, match="cached"):  # other settings -> another key
        extract_revisited(model, ds, ExtractConfig(image_size=48, scales=(1.0,)), cache_dir=tmp_path / "cache")
    with torch.no_grad():
        model.pool.p.fill_(4.0)  # other weights -> another key
    try:
        with pytest.raises(AssertionError, match="cached"):
            extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache")
    finally:
        with torch.no_grad():
            model.pool.p.fill_(3.0)


def test_uncropped_queries_differ_from_cropped(tiny_revisited, model):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cropped, _ = extract_revisited(model, ds, ExtractConfig(image_size=64, scales=(1.0,)), progress=False)
    full, _ = extract_revisited(
        model, ds, ExtractConfig(image_size=64, scales=(1.0,), crop_queries=False), progress=False
    )
    assert not np.allclose(cropped[0], full[0])
    np.testing.assert_allclose(cropped[1], full[1], atol=1e-5)  # query 1's box is the whole image


def test_a_missing_image_names_file_and_dataset(tiny_revisited, model):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    ds.db_paths[3].unlink()
    with pytest.raises(ImageLoadError, match=r"db_3\.jpg of dataset 'tiny' does not exist"):
        extract_descriptors(model, ds.db_paths, cfg=ExtractConfig(image_size=64), dataset="tiny", progress=False)
    with pytest.raises(FileNotFoundError, match=r"1 of 8 images of tiny are missing, e.g. .*db_3\.jpg; the revisited"):
        extract_revisited(model, ds, ExtractConfig(image_size=64, scales=(1.0,)), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scales": ()}, "scales"), ({"crop_mode": "floor"}, "crop_mode"), ({"image_size": 4}, "image_size")],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig(**kwargs)


def test_models_with_5d_weights_extract_without_channels_last(tiny_revisited):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    model = create_model("senet", backbone="resnet18")
    out = extract_descriptors(model, ds.db_paths[:2], cfg=ExtractConfig(image_size=64, scales=(1.0,)), progress=False)
    assert out.shape == (2, model.feat_dim) and np.isfinite(out).all()


def test_the_model_stays_trainable_after_extraction(tiny_revisited, model):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    extract_descriptors(model, ds.db_paths[:2], cfg=ExtractConfig(image_size=64, scales=(1.0,)), progress=False)
    assert not any(p.is_inference() for p in model.parameters())
    loss = model(torch.rand(1, 3, 64, 64)).sum()
    loss.backward()  # inference tensors would refuse to take part in autograd
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_damaged_cache_file_is_a_miss_with_a_warning(tiny_revisited, model, tmp_path):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=48, scales=(1.0,))
    q, x = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    for path in (tmp_path / "cache").glob("*.npy"):
        path.write_bytes(path.read_bytes()[:-8])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match=r"feature cache .*\.npy is unreadable .*extracting again"):
        q2, x2 = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(x2, x)
    q3, _ = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)  # rewritten whole
    np.testing.assert_array_equal(q3, q)


def test_an_extraction_that_fails_keeps_its_rows_and_a_rerun_extracts_only_the_rest(
    tiny_revisited, model, tmp_path, monkeypatch
):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=48, scales=(1.0,), batch_size=1)
    q_full, x_full = extract_revisited(model, ds, cfg, progress=False)
    broken = ds.db_paths[3]
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:40])  # a truncated file, as from an interrupted copy
    with pytest.raises(ImageLoadError, match=r"db_3\.jpg"):
        extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("partial-*.npy"))) == 1  # the queries finished; db rows 0-2 kept

    broken.write_bytes(good_bytes)
    changed = ds.db_paths[1].stat()  # an image changed since its row was kept is extracted again
    os.utime(ds.db_paths[1], ns=(changed.st_atime_ns, changed.st_mtime_ns + 10**9))
    loaded: list[str] = []
    load = _Images.load
    monkeypatch.setattr(_Images, "load", lambda self, i: loaded.append(self.paths[i].name) or load(self, i))
    q, x = extract_revisited(model, ds, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert sorted(loaded) == ["db_1.jpg", "db_3.jpg", "db_4.jpg", "db_5.jpg"]
    np.testing.assert_array_equal(q, q_full)
    np.testing.assert_array_equal(x, x_full)
    assert not list((tmp_path / "cache").glob("partial-*"))  # finished: the unfinished record is gone


def _pack(paths: list[Path], shard: Path) -> list[TarMember]:
    """The files ``paths`` as members of one tar shard, in order."""
    members = write_shard(shard, {f"{i:08d}.jpg": p.read_bytes() for i, p in enumerate(paths)})
    return list(members.values())


def test_tar_members_extract_as_the_same_files_on_disk(tiny_revisited, model, tmp_path):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    cfg = ExtractConfig(image_size=64, scales=(1.0, 0.5), batch_size=2)
    members = _pack(ds.db_paths[1::2], tmp_path / "000000.tar")
    mixed = [ds.db_paths[0], members[0], ds.db_paths[2], members[1], ds.db_paths[4], members[2]]
    got = extract_descriptors(model, mixed, cfg=cfg, progress=False)
    np.testing.assert_allclose(got, extract_descriptors(model, ds.db_paths, cfg=cfg, progress=False), atol=1e-6)


def test_cache_keys_and_states_of_tar_members_follow_their_shard(tiny_revisited, tmp_path):
    ds = RevisitedDataset.from_dir(tiny_revisited)
    shard = tmp_path / "000000.tar"
    members = _pack(ds.db_paths[:2], shard)
    st = shard.stat()
    states = _image_states([*members, ds.db_paths[0], tmp_path / "gone.jpg"])
    assert states[0] == f"{st.st_size}|{st.st_mtime_ns}|{members[0].offset}|{members[0].size}"
    assert states[1].startswith(f"{st.st_size}|{st.st_mtime_ns}|") and states[1] != states[0]
    assert states[3] == "missing"
    cfg = ExtractConfig(image_size=64)
    key = FeatureCache.key("w", members, None, cfg)
    assert key == FeatureCache.key("w", list(members), None, cfg) and key != FeatureCache.key(
        "w", ds.db_paths[:2], None, cfg
    )
    partial = FeatureCache.key("w", members, None, cfg, partial=True)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten shard: other descriptors
    assert FeatureCache.key("w", members, None, cfg) != key
    assert FeatureCache.key("w", members, None, cfg, partial=True) == partial


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resize": "stretch"}, "resize must be one of"),
        ({"resize": "long-side", "image_size": None}, "needs an image_size"),
        ({"exif_transpose": True}, "exif_transpose must be one of"),
    ],
)
def test_bad_resize_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig(**kwargs)
