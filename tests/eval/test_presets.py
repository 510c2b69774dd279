"""Each official test pipeline (preset) produces exactly its documented preprocessing on a real photo."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from irlib.eval.extract import PRESETS, _Images, extract_descriptors, multiscale_descriptor, preset, scale_image
from tests.conftest import oracle_model_case
from tests.data.test_images import jpeg_bytes, write_shard

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BOX = [30.5, 20.4, 380.6, 251.5]  # fractional, as many ROxf boxes


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"  # lossless: decoding is not in question
    Image.fromarray(data.chelsea()).save(path)
    return path


def normalise(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def items(cfg, photo, box=BOX):
    return _Images([photo], [box], cfg, MEAN, STD, "photo")[0][1]


@pytest.mark.parametrize("name", ["revisitop", "spca"])
def test_cirtorch_family_crops_by_rounding_and_thumbnails_the_crop_at_the_full_image_scale(name, photo):
    cfg = preset(name, image_size=256)
    full = Image.open(photo).convert("RGB")
    crop = full.crop(tuple(BOX))
    side = 256 * max(crop.size) / max(full.size)
    crop.thumbnail((side, side), Image.Resampling.LANCZOS)
    (x,) = items(cfg, photo)
    assert x.shape[1:] == (crop.height, crop.width) and crop.width < 350  # shrunk like the full image
    torch.testing.assert_close(x, normalise(np.asarray(crop)), rtol=0, atol=0)


def test_cvnet_truncates_the_box_and_resizes_the_uint8_image_per_scale_with_opencv(photo):
    cfg = PRESETS["cvnet"]
    arr = np.asarray(Image.open(photo).convert("RGB"))[20:251, 30:380]  # int() of every coordinate
    xs = items(cfg, photo)
    assert len(xs) == len(cfg.scales)
    for s, x in zip(cfg.scales, xs, strict=True):
        mode = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        expected = arr if s == 1.0 else cv2.resize(arr, (0, 0), fx=s, fy=s, interpolation=mode)
        torch.testing.assert_close(x, normalise(expected), rtol=0, atol=0)


def test_dolg_truncates_the_box_and_resizes_the_float_image_per_scale_with_opencv(photo):
    cfg = PRESETS["dolg"]
    arr = np.asarray(Image.open(photo).convert("RGB"))[20:251, 30:380].astype(np.float32)
    xs = items(cfg, photo)
    assert [tuple(x.shape[1:]) for x in xs] == [(82, 124), (116, 175), (163, 247), (231, 350), (327, 495)]
    for s, x in zip(cfg.scales, xs, strict=True):
        size = (round(350 * s), round(231 * s))
        expected = arr if s == 1.0 else cv2.resize(arr, size, interpolation=cv2.INTER_LINEAR)
        torch.testing.assert_close(x, normalise(expected), rtol=0, atol=0)


def test_superglobal_feeds_the_truncated_crop_at_original_size_once(photo):
    (x,) = items(PRESETS["superglobal"], photo)
    arr = np.asarray(Image.open(photo).convert("RGB"))[20:251, 30:380]
    torch.testing.assert_close(x, normalise(arr), rtol=0, atol=0)
    assert PRESETS["superglobal"].scales == (1.0,)


def test_preset_scale_sets_and_recorded_settings():
    assert PRESETS["cvnet"].scales == (0.7071, 1.0, 1.4142)
    assert PRESETS["dolg"].scales == (0.3535, 0.5, 0.7071, 1.0, 1.4142)
    assert PRESETS["spca"].scales == pytest.approx((1, math.sqrt(2), 1 / math.sqrt(2)))
    assert PRESETS["revisitop"].scales == pytest.approx((1, 1 / math.sqrt(2), 0.5))
    for name, cfg in PRESETS.items():
        s = cfg.settings()
        assert s["preset"] == name and {"image_size", "scale_resize", "crop_mode", "interpolation"} <= s.keys()
    with pytest.raises(ValueError, match="unknown preset 'cvnett'"):
        preset("cvnett")


def test_spca_skips_scales_whose_side_falls_below_36_pixels():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(1, 3, 40, 60)  # 1/sqrt2 gives 28 px: skipped
    got = multiscale_descriptor(model, [x], PRESETS["spca"].scales, min_side=36)
    up = torch.nn.functional.interpolate(x, scale_factor=math.sqrt(2), mode="bilinear", align_corners=False)
    parts = [torch.nn.functional.normalize(model(t), dim=-1) for t in (x, up)]
    torch.testing.assert_close(got, torch.nn.functional.normalize(parts[0] + parts[1], dim=-1))


def test_opencv_scaling_reproduces_the_official_cvnet_resized_images():
    rec, _, _ = oracle_model_case("cvnet_global_r50.pt")
    images = rec["inputs"]["ms_image_u8"].numpy()
    for s in ("0.7071", "1.4142"):
        expected = rec["inputs"][f"ms_image_u8_scale{s}"].numpy()
        got = np.stack([scale_image(im, float(s), "cv2-area-linear") for im in images])
        np.testing.assert_array_equal(got, expected)


def _png_copies(images_bgr: np.ndarray, folder) -> list:
    """The oracle's BGR uint8 images as lossless RGB PNG files (what the official DataLoaders read)."""
    paths = []
    for i, im in enumerate(images_bgr):
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(np.ascontiguousarray(im[..., ::-1])).save(paths[-1])
    return paths


def test_dolg_preset_with_the_converted_official_model_reproduces_the_official_multiscale_descriptor(tmp_path):
    from irlib.models import create_model, load_checkpoint

    rec, state_dict, _ = oracle_model_case("dolg_r50.pt")
    model = load_checkpoint(create_model("dolg", backbone="resnet50"), state_dict, source="dolg")
    paths = _png_copies(rec["inputs"]["ms_image_u8"].numpy(), tmp_path)
    got = extract_descriptors(model, paths, cfg=preset("dolg", crop_queries=False), progress=False)
    np.testing.assert_allclose(got, rec["outputs"]["ms_global_desc"].numpy(), rtol=0, atol=1e-6)


def test_cvnet_preset_with_the_converted_official_model_reproduces_the_official_multiscale_descriptor(tmp_path):
    from irlib.models import create_model, load_checkpoint

    rec, state_dict, _ = oracle_model_case("cvnet_global_r50.pt")
    model = load_checkpoint(create_model("cvnet", backbone="resnet50"), state_dict, source="cvnet")
    paths = _png_copies(rec["inputs"]["ms_image_u8"].numpy(), tmp_path)
    got = extract_descriptors(model, paths, cfg=preset("cvnet", crop_queries=False), progress=False)
    np.testing.assert_allclose(got, rec["outputs"]["ms_global_desc"].numpy(), rtol=0, atol=1e-6)


def _load(cfg, ref) -> np.ndarray:
    return _Images([ref], None, cfg, MEAN, STD, "photo").load(0)


def test_ilias_sets_the_longer_side_to_512_with_pillows_default_resize_enlarging_too(photo, tmp_path):
    cfg = PRESETS["ilias"]
    assert (cfg.scales, cfg.crop_queries, cfg.fp16) == ((1.0,), False, True)
    full = Image.open(photo).convert("RGB")  # 451 x 300: enlarged
    assert full.size == (451, 300)
    (x,) = _Images([photo], None, cfg, MEAN, STD, "photo")[0][1]
    assert x.shape == (3, int(512 * 300 / 451), 512) == (3, 340, 512)
    torch.testing.assert_close(x, normalise(np.asarray(full.resize((512, 340)))), rtol=0, atol=0)  # LargeSideResize
    portrait = tmp_path / "portrait.png"
    full.transpose(Image.Transpose.TRANSPOSE).save(portrait)
    assert _load(cfg, portrait).shape == (512, int(512 / (451 / 300)), 3) == (512, 340, 3)
    small = preset("ilias", image_size=384)  # the resolution of many models in ilias scripts/models.sh
    assert _load(small, photo).shape == (255, 384, 3)


def test_ilias_transposes_image_files_by_exif_but_not_shard_members(tmp_path):
    img = data.astronaut()[::4, ::2]  # 128 x 256
    payload = jpeg_bytes(img, orientation=6)
    (tmp_path / "P000_00.jpg").write_bytes(payload)
    member = write_shard(tmp_path / "000000.tar", {"00000001.jpg": payload})["00000001.jpg"]
    cfg = PRESETS["ilias"]
    assert _load(cfg, tmp_path / "P000_00.jpg").shape == (512, 256, 3)  # turned upright, as ImageDataset does
    assert _load(cfg, member).shape == (256, 512, 3)  # as decoded by webdataset, no transpose
    assert _load(preset("ilias", exif_transpose="always"), member).shape == (512, 256, 3)
    assert _load(preset("ilias", exif_transpose="never"), tmp_path / "P000_00.jpg").shape == (256, 512, 3)


def test_uned_resizes_the_shorter_side_to_224_bilinearly_and_crops_the_centre(photo, tmp_path):
    cfg = PRESETS["uned"]
    assert (cfg.image_size, cfg.scales, cfg.crop_queries) == (224, (1.0,), False)
    arr = np.asarray(Image.open(photo).convert("RGB")).astype(np.float32)  # 300 x 451
    (x,) = _Images([photo], None, cfg, MEAN, STD, "photo")[0][1]
    assert x.shape == (3, 224, 224)
    # tf.image.resize bilinear = half-pixel centres without antialiasing, as OpenCV's INTER_LINEAR on floats
    width = int(451 / 300 * 224)
    expected = cv2.resize(arr, (width, 224), interpolation=cv2.INTER_LINEAR)[:, (width - 224) // 2 :][:, :224]
    torch.testing.assert_close(x, normalise(expected), rtol=0, atol=1e-4)
    portrait = tmp_path / "portrait.png"
    Image.fromarray(arr.astype(np.uint8).transpose(1, 0, 2)).save(portrait)
    got = _load(cfg, portrait)
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.transpose(1, 0, 2), atol=1e-3)


def test_universal_presets_extract_descriptors(photo):
    from irlib.models import create_model

    torch.manual_seed(0)
    model = create_model("gem", backbone="efficientnet_lite0")
    ilias = extract_descriptors(model, [photo], cfg=preset("ilias", image_size=128), progress=False)
    uned = extract_descriptors(model, [photo], cfg=PRESETS["uned"], progress=False)
    assert ilias.dtype == np.float16 and uned.dtype == np.float32 and ilias.shape == uned.shape == (1, model.feat_dim)
    np.testing.assert_allclose(np.linalg.norm(uned, axis=1), 1, atol=1e-5)
