"""Deterministic synthetic landmark-retrieval data for the offline demo.

The project has to run end to end without downloading ROxford/RParis or GLDv2, so this module renders a
small stand-in: planar landmark "facades" (procedural architecture around real photographic murals shipped
by scikit-image and matplotlib) photographed from many viewpoints into cluttered street scenes. It writes

* ``<out>/demo/``: a test set in the revisited Oxford/Paris format (``gnd_demo.pkl`` + ``jpg/``), with
  easy/hard/junk positives measured from each view's rendering parameters;
* ``<out>/train/``: a training split in the Google-Landmarks-v2 layout, of *other* landmarks plus a few
  planted *overlap* classes: new photographs of test landmarks under random landmark ids. They imitate, on
  purpose, the landmarks GLDv2-clean shares with ROxford/RParis (CiDeR, CVPR 2024), so that
  :mod:`irlib.data.overlap` can be tested against a known answer;
* ``<out>/demo_info.json``: config, counts, generator version and the planted overlaps
  (``overlap_landmarks``: training ``landmark_id`` -> test landmark name).

Everything is drawn from ``numpy.random.default_rng`` streams keyed by ``(seed, purpose, index)``, so the
same config always produces byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

__all__ = ["DEMO_DATASET", "DemoConfig", "make_demo_data"]

DEMO_DATASET = "demo"

_GENERATOR_VERSION = 2
_MARKER = ".demo_complete"
_OUTPUTS = (DEMO_DATASET, "train", "demo_info.json")

# Landmark kind (the readable part of a landmark name) -> silhouette/roof style of its facade.
_KINDS: dict[str, str] = {
    "tower": "spire",
    "cathedral": "gable",
    "palace": "dome",
    "museum": "pediment",
    "gate": "gate",
    "castle": "crenel",
    "temple": "steps",
    "station": "flat",
    "chapel": "gable",
    "observatory": "dome",
    "theatre": "pediment",
    "fortress": "crenel",
    "library": "flat",
    "basilica": "gable",
    "pavilion": "dome",
    "belfry": "spire",
}

# Independent random streams, so that changing one count does not reshuffle everything else.
_S_TILES, _S_TEST_LM, _S_TRAIN_LM, _S_GENERIC, _S_PLAN, _S_QUERY, _S_DB, _S_CLUTTER, _S_TRAIN, _S_IDS = range(10)
_S_OVERLAP = 10  # appended: planting overlaps changed no earlier stream

# Roof height of a facade as a fraction of its width, per silhouette style.
_ROOF_HEIGHT = {"gable": 0.4, "pediment": 0.18, "dome": 0.45, "crenel": 0.16, "gate": 0.2, "steps": 0.3}

# Gateway opening: width as a fraction of the facade width, arch springing line as a fraction of its height.
_GATE_WIDTH, _GATE_SPRING = 0.22, 0.7

_N_GENERIC = 16  # pool of ordinary buildings used as background clutter and in distractors
_N_MIPS = 4

_EASY_MIN_VISIBLE = 0.7
_EASY_MAX_OCCLUDED = 0.2
_EASY_MAX_ANGLE = 25.0
_EASY_MIN_AREA = 0.08
_EASY_MAX_BLUR = 1.0
_EASY_MAX_LIGHT = 0.3
_JUNK_MAX_VISIBLE = 0.25
_JUNK_MAX_AREA = 0.02


@dataclass(frozen=True)
class DemoConfig:
    """All knobs of the demo dataset; the defaults give 300 test and 216 training images.

    Each landmark's mural is a distinct region of a bundled photo; there are 41 such regions, so test and
    training landmarks share no photographic content while ``n_test_landmarks + n_train_landmarks <= 41``.
    The exception is deliberate: the ``n_overlap_landmarks`` planted training classes photograph distinct test
    landmarks anew (``train_views_per_landmark`` images each, from their own random stream).
    """

    seed: int = 0
    n_test_landmarks: int = 12
    queries_per_landmark: int = 2
    views_per_landmark: int = 18
    n_distractors: int = 60
    n_train_landmarks: int = 24
    train_views_per_landmark: int = 8
    n_overlap_landmarks: int = 3
    image_size: tuple[int, int] = (384, 288)
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be non-negative")
        if self.n_test_landmarks < 1 or self.queries_per_landmark < 1:
            raise ValueError("need at least one test landmark and one query per landmark")
        if self.views_per_landmark < 2:
            raise ValueError("views_per_landmark must be >= 2 (every query needs an easy and a hard positive)")
        if min(self.n_distractors, self.n_train_landmarks, self.train_views_per_landmark) < 0:
            raise ValueError("counts must be non-negative")
        if not 0 <= self.n_overlap_landmarks <= self.n_test_landmarks:
            raise ValueError(
                f"n_overlap_landmarks must be in [0, n_test_landmarks={self.n_test_landmarks}] (each planted "
                f"overlap class photographs a different test landmark), got {self.n_overlap_landmarks}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 64:
            raise ValueError("image_size must be (w, h) with both sides >= 64")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in [1, 100]")


def make_demo_data(
    out_dir: str | Path, config: DemoConfig = DemoConfig(), *, force: bool = False, progress: bool = True
) -> Path:
    """Generate the demo test set and training split under ``out_dir`` once, and return ``out_dir``.

    A completion marker records the config fingerprint: calling again with the same config is a no-op,
    while a different config or ``force=True`` regenerates. The data are built in a temporary folder
    inside ``out_dir`` and moved into place only when complete, so an interrupted run leaves the previous
    state (or nothing) under the final names.
    """
    out = Path(out_dir)
    fingerprint = _fingerprint(config)
    marker = out / _MARKER
    done = marker.is_file() and marker.read_text() == fingerprint and all((out / n).exists() for n in _OUTPUTS)
    if done and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=out))
    try:
        _generate(tmp, config, fingerprint, progress)
        marker.unlink(missing_ok=True)
        for name in _OUTPUTS:
            _remove(out / name)
            os.replace(tmp / name, out / name)
        os.replace(tmp / _MARKER, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fingerprint(config: DemoConfig) -> str:
    payload = json.dumps({"version": _GENERATOR_VERSION, "config": asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(list(keys))


# ----------------------------------------------------------------------------------------------- assets


@dataclass(frozen=True)
class _Assets:
    tiles: tuple[Image.Image, ...]  # disjoint, detailed photo regions that become landmark murals
    posters: tuple[Image.Image, ...]  # signs and adverts for ordinary buildings (never landmark murals)
    materials: tuple[Image.Image, ...]  # grey textures (mirror-tiled to 1024 px) for walls, ground, foliage


_BRICK, _GRAVEL, _GRASS, _MOON, _CELL = range(5)


@lru_cache(maxsize=1)
def _assets() -> _Assets:
    """Load the photos that ship with scikit-image and matplotlib (no network access needed)."""
    from matplotlib import cbook
    from skimage import data

    def rgb(arr: np.ndarray) -> Image.Image:
        img = Image.fromarray(arr)
        if img.mode == "RGBA":
            return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
        return img.convert("RGB")

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    photos = [
        rgb(data.astronaut()),
        rgb(data.chelsea()),
        rgb(data.coffee()),
        rgb(data.rocket()),
        rgb(data.stereo_motorcycle()[0]),
        hopper,
        rgb(data.hubble_deep_field()).resize((600, 523), Image.Resampling.BOX),
        rgb(data.retina()).crop((260, 260, 1150, 1150)).resize((500, 500), Image.Resampling.BOX),
        rgb(data.immunohistochemistry()),
        rgb(data.camera()),
        rgb(data.clock()),
        rgb(data.coins()),
        rgb(data.logo()),
    ]
    posters = (rgb(data.text()), rgb(data.page()), rgb(data.colorwheel()), rgb(data.horse()))
    tiles = []
    for photo in photos:
        w, h = photo.size
        quads = [photo.crop((x, y, x + w // 2, y + h // 2)) for y in (0, h // 2) for x in (0, w // 2)]
        detailed = [q for q in quads if _detail(q) >= 8.0]
        tiles.extend(detailed or [photo])
    materials = []
    for arr in (data.brick(), data.gravel(), data.grass(), data.moon(), data.cell()):
        arr = arr[:512, :512]
        materials.append(Image.fromarray(np.pad(arr, ((0, 512), (0, 512)), mode="symmetric")))
    return _Assets(tuple(tiles), posters, tuple(materials))


def _detail(img: Image.Image) -> float:
    """Mean absolute gradient at 128 px: low for sky, blank walls and other flat regions."""
    g = np.asarray(img.convert("L").resize((128, 128), Image.Resampling.BOX), np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


# ------------------------------------------------------------------------------------- colours & noise


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return round(r * 255), round(g * 255), round(b * 255)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int, stretch: float = 1.0) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic upsampling of a coarse random grid, ``stretch``-ed sideways)."""
    gw, gh = max(2, cells), max(2, round(cells * h / w / stretch))
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _material_crop(rng: np.random.Generator, material: Image.Image, w: int, h: int, density: float) -> np.ndarray:
    """A random region of a grey texture, ``density`` texture pixels per output pixel, resized to (h, w).

    Returned normalised to zero mean and unit variance, ready to modulate a colour.
    """
    side = material.size[0]
    density = min(density, side / w, side / h)
    cw, ch = w * density, h * density
    x0, y0 = rng.uniform(0, side - cw), rng.uniform(0, side - ch)
    tex = np.asarray(material.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)), np.float32)
    return (tex - tex.mean()) / (tex.std() + 1e-3)


def _fit_crop(rng: np.random.Generator, img: Image.Image, w: int, h: int, zoom: float) -> Image.Image:
    """Crop ``img`` to the aspect ratio w:h (a random window covering ``zoom`` of it) and resize."""
    iw, ih = img.size
    cw = min(iw, ih * w / h) * zoom
    ch = cw * h / w
    x0, y0 = rng.uniform(0, iw - cw), rng.uniform(0, ih - ch)
    return img.resize((w, h), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))


# ---------------------------------------------------------------------------------------------- facades


@dataclass(frozen=True)
class _Style:
    """Appearance that two landmarks may share, to make hard negatives."""

    wall: tuple[int, int, int]
    trim: tuple[int, int, int]
    accent: tuple[int, int, int]
    roof: tuple[int, int, int]
    glass_hue: float
    material: int
    rows: int
    cols: int
    window: str
    win_w: float
    win_h: float
    pilasters: bool
    cornices: bool
    texture: float


# Wall colour families (hue, saturation range, value range): stone, sandstone, brick, ochre, rose, pastel.
_WALLS = (
    (0.1, (0.0, 0.08), (0.7, 0.92)),
    (0.1, (0.2, 0.4), (0.7, 0.9)),
    (0.02, (0.45, 0.65), (0.45, 0.65)),
    (0.12, (0.4, 0.6), (0.75, 0.9)),
    (0.97, (0.2, 0.4), (0.75, 0.9)),
    (0.45, (0.12, 0.3), (0.65, 0.85)),
)


def _sample_style(rng: np.random.Generator, muted: bool = False) -> _Style:
    hue, (s0, s1), (v0, v1) = _WALLS[int(rng.integers(3 if muted else len(_WALLS)))]
    hue += rng.uniform(-0.03, 0.03) if hue != 0.45 else rng.uniform(-0.15, 0.15)
    sat = rng.uniform(s0, s1)
    return _Style(
        wall=_hsv(hue, sat, rng.uniform(v0, v1)),
        trim=_hsv(hue, sat * 0.4, rng.uniform(0.85, 1.0)),
        accent=_hsv(hue + rng.choice([0.0, 0.33, 0.5, 0.67]), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.7)),
        roof=_hsv(
            rng.choice([0.02, 0.08, 0.5, 0.6]) + rng.uniform(-0.03, 0.03), rng.uniform(0.2, 0.6), rng.uniform(0.25, 0.6)
        ),
        glass_hue=rng.uniform(0.5, 0.65),
        material=int(rng.integers(len(_assets().materials))),
        rows=int(rng.integers(2, 6)),
        cols=int(rng.integers(3, 8)),
        window=str(rng.choice(["rect", "rect", "arch", "arch", "pointed", "round"])),
        win_w=rng.uniform(0.4, 0.7),
        win_h=rng.uniform(0.45, 0.75),
        pilasters=bool(rng.random() < 0.5),
        cornices=bool(rng.random() < 0.6),
        texture=rng.uniform(0.1, 0.22),
    )


def _silhouette(kind: str, w: int, h: int, top: int) -> Image.Image:
    """Alpha mask of a facade whose body spans rows ``top..h`` and whose roof fills the rows above."""
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    d.rectangle((0, top, w - 1, h - 1), fill=255)
    if kind in ("gable", "pediment"):
        d.polygon([(0, top), (w / 2, 0), (w - 1, top)], fill=255)
    elif kind == "spire":
        d.polygon([(w * 0.18, top), (w / 2, 0), (w * 0.82, top)], fill=255)
        for x in (0.0, w * 0.82):
            d.polygon([(x, top), (x + w * 0.09, top * 0.6), (x + w * 0.18, top)], fill=255)
    elif kind == "dome":
        drum = top * 0.3
        d.rectangle((w * 0.3, top - drum, w * 0.7, top), fill=255)
        d.pieslice((w * 0.27, top * 0.12, w * 0.73, 2 * (top - drum) - top * 0.12), 180, 360, fill=255)
        d.rectangle((w * 0.47, 0, w * 0.53, top * 0.15), fill=255)
    elif kind in ("crenel", "gate"):
        tower_w = w * (0.28 if kind == "gate" else 0.16)
        merlon = max(6, w // 22)
        for x0, x1, y in ((0, tower_w, top * 0.35), (w - 1 - tower_w, w - 1, top * 0.35), (0, w - 1, top)):
            d.rectangle((x0, y, x1, h - 1), fill=255)
            for mx in np.arange(x0, x1 - merlon / 2, 2 * merlon):
                d.rectangle((mx, y - top * 0.3, min(mx + merlon, x1), y), fill=255)
        if kind == "gate":
            aw, spring = w * _GATE_WIDTH, h * _GATE_SPRING
            d.rectangle((w / 2 - aw / 2, spring, w / 2 + aw / 2, h - 1), fill=0)
            d.ellipse((w / 2 - aw / 2, spring - aw / 2, w / 2 + aw / 2, spring + aw / 2), fill=0)
    elif kind == "steps":
        for i in range(3):
            inset = w * 0.12 * (i + 1)
            d.rectangle((inset, top * (2 - i) / 3, w - 1 - inset, top), fill=255)
    else:  # flat roof with a balustrade
        d.rectangle((0, top * 0.4, w - 1, top), fill=255)
        for x in range(4, w - 8, 12):
            d.rectangle((x, top * 0.55, x + 5, top * 0.85), fill=0)
    return mask


def _facade(
    rng: np.random.Generator, kind: str, style: _Style, mural: Image.Image | None, assets: _Assets
) -> Image.Image:
    """Render one landmark facade as an RGBA image (alpha = silhouette)."""
    if kind == "spire":
        w, body, top = int(rng.integers(150, 200)), int(rng.integers(250, 310)), int(rng.integers(90, 130))
    else:
        w, body = int(rng.integers(280, 360)), int(rng.integers(190, 250))
        top = int(w * _ROOF_HEIGHT.get(kind, 0.08) * rng.uniform(0.85, 1.15)) + 8
    h = body + top
    alpha = _silhouette(kind, w, h, top)

    img = Image.new("RGB", (w, h), style.wall)
    d = ImageDraw.Draw(img)
    if kind in ("spire", "dome", "gable"):
        d.rectangle((0, 0, w, top), fill=style.roof)
    cols = min(style.cols, 2) if kind == "spire" else style.cols
    rows = style.rows + (2 if kind == "spire" else 0)
    margin = max(8, w // 16)
    door_h = int(body * rng.uniform(0.18, 0.24))
    cell_w = (w - 2 * margin) / cols
    cell_h = (body - door_h - 2 * margin) / rows
    d.rectangle((0, h - 14, w, h), fill=tuple(int(c * 0.7) for c in style.wall))
    if style.pilasters:
        for c in range(cols + 1):
            x = margin + c * cell_w
            d.rectangle((x - 5, top, x + 5, h - 14), fill=style.accent)
    if style.cornices:
        for r in range(rows + 1):
            y = top + margin + r * cell_h
            d.rectangle((0, y - 6, w, y - 1), fill=style.trim)
    tex = _material_crop(rng, assets.materials[style.material], w, h, rng.uniform(0.6, 1.6))
    shade = 1.0 + style.texture * tex
    arr = np.asarray(img, np.float32) * np.clip(shade, 0.5, 1.5)[..., None]

    # Windows: glass seen through a mask, framed by a dilated copy of that mask.
    win = Image.new("L", (w, h), 0)
    glass = Image.new("RGB", (w, h))
    dw, dg = ImageDraw.Draw(win), ImageDraw.Draw(glass)
    ww, wh = cell_w * style.win_w, cell_h * style.win_h
    boxes = []
    for r in range(rows):
        for c in range(cols):
            x0 = margin + (c + 0.5) * cell_w - ww / 2
            y0 = top + margin + (r + 0.5) * cell_h - wh / 2
            box = (x0, y0, x0 + ww, y0 + wh)
            boxes.append(box)
            lit = rng.random() < 0.12
            tone = _hsv(0.12, 0.6, 0.9) if lit else _hsv(style.glass_hue, 0.35, rng.uniform(0.15, 0.45))
            dg.rectangle(box, fill=tone)
            _window_shape(dw, style.window, box)
    frame = win.filter(ImageFilter.MaxFilter(5))
    glass_arr = np.asarray(glass, np.float32) * (0.7 + 0.6 * _smooth_noise(rng, w, h, 6))[..., None]
    wall_arr = np.clip(arr, 0, 255)
    frame_arr = np.asarray(frame, np.float32)[..., None] / 255
    win_arr = np.asarray(win, np.float32)[..., None] / 255
    arr = wall_arr * (1 - frame_arr) + np.array(style.trim, np.float32) * frame_arr
    arr = arr * (1 - win_arr) + glass_arr * win_arr
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if style.window in ("rect", "arch", "pointed"):
        for x0, y0, x1, y1 in boxes:
            d.line(((x0 + x1) / 2, y0 + (x1 - x0) / 2, (x0 + x1) / 2, y1), fill=style.trim, width=2)
            d.line((x0, y0 + 0.6 * (y1 - y0), x1, y0 + 0.6 * (y1 - y0)), fill=style.trim, width=2)

    if kind != "gate":
        door_w = max(22, int(w * 0.16))
        door = (w / 2 - door_w / 2, h - 14 - door_h, w / 2 + door_w / 2, h - 14)
        d.rectangle((door[0] - 4, door[1] - 4, door[2] + 4, door[3]), fill=style.trim)
        d.rectangle(door, fill=_hsv(0.07, 0.6, 0.25))
    if mural is not None:
        bottom = h * _GATE_SPRING - w * _GATE_WIDTH / 2 if kind == "gate" else h - 14 - door_h
        _place_mural(rng, img, kind, mural, style, top, int(bottom) - 8)

    weather = (0.82 + 0.3 * _smooth_noise(rng, w, h, 5)) * np.linspace(1.05, 0.88, h, dtype=np.float32)[:, None]
    arr = np.asarray(img, np.float32) * weather[..., None]
    rgba = np.dstack([np.clip(arr, 0, 255).astype(np.uint8), np.asarray(alpha)])
    return Image.fromarray(rgba, "RGBA")


def _window_shape(d: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    r = min(x1 - x0, y1 - y0) / 2
    if shape == "round":
        side = min(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        d.ellipse((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), fill=255)
    elif shape == "arch":
        d.rectangle((x0, y0 + r, x1, y1), fill=255)
        d.pieslice((x0, y0, x1, y0 + 2 * r), 180, 360, fill=255)
    elif shape == "pointed":
        d.polygon([(x0, y1), (x0, y0 + 1.2 * r), ((x0 + x1) / 2, y0), (x1, y0 + 1.2 * r), (x1, y1)], fill=255)
    else:
        d.rectangle(box, fill=255)


def _place_mural(
    rng: np.random.Generator,
    img: Image.Image,
    kind: str,
    mural: Image.Image,
    style: _Style,
    top: int,
    bottom: int,
) -> None:
    """Paste a photographic mural (rose window, panel or arched window) between rows ``top`` and ``bottom``."""
    w, _ = img.size
    mw = int(w * (rng.uniform(0.6, 0.75) if kind == "spire" else rng.uniform(0.4, 0.56)))
    shape = "round" if kind in ("gable", "pediment") else str(rng.choice(["rect", "arch"]))
    mh = min(mw if shape == "round" else int(mw * rng.uniform(0.75, 1.2)), bottom - top - 12)
    if shape == "round":
        mw = mh
    x0 = (w - mw) // 2
    y0 = int(top + 6 + rng.uniform(0.1, 0.6) * max(0, bottom - top - 12 - mh))
    img.paste(style.trim, (x0 - 6, y0 - 6), _shape_mask(shape, mw + 12, mh + 12))
    img.paste(_fit_crop(rng, mural, mw, mh, rng.uniform(0.8, 1.0)), (x0, y0), _shape_mask(shape, mw, mh))


def _shape_mask(shape: str, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    _window_shape(ImageDraw.Draw(mask), shape, (0, 0, w - 1, h - 1))
    return mask


@dataclass(frozen=True)
class _Landmark:
    name: str
    mips: tuple[Image.Image, ...]  # premultiplied RGBa facade; mips[i] is downscaled by 2**i

    @property
    def size(self) -> tuple[int, int]:
        return self.mips[0].size


def _make_landmark(name: str, facade: Image.Image) -> _Landmark:
    mips = [facade.convert("RGBa")]
    for _ in range(_N_MIPS - 1):
        mips.append(mips[-1].reduce(2))
    return _Landmark(name, tuple(mips))


def _test_landmarks(config: DemoConfig, assets: _Assets, tile_order: np.ndarray) -> list[_Landmark]:
    """Test landmarks; landmarks 4k and 4k+1 share a style (palette, material, windows) as hard negatives."""
    kinds = list(_KINDS)
    perm = _rng(config.seed, _S_TEST_LM).permutation(len(kinds))
    out, styles = [], []
    for i in range(config.n_test_landmarks):
        rng = _rng(config.seed, _S_TEST_LM, i)
        kind = kinds[perm[i % len(kinds)]]
        style = styles[i - 1] if i % 4 == 1 else _sample_style(rng)
        styles.append(style)
        tile = assets.tiles[tile_order[i % len(tile_order)]]
        out.append(_make_landmark(f"{kind}_{i:02d}", _facade(rng, _KINDS[kind], style, tile, assets)))
    return out


def _train_landmarks(config: DemoConfig, assets: _Assets, tile_order: np.ndarray) -> list[_Landmark]:
    """Training landmarks: their own facades, with mural tiles after the test set's in ``tile_order``."""
    kinds = list(_KINDS)
    out = []
    for j in range(config.n_train_landmarks):
        rng = _rng(config.seed, _S_TRAIN_LM, j)
        kind = kinds[int(rng.integers(len(kinds)))]
        tile = assets.tiles[tile_order[(config.n_test_landmarks + j) % len(tile_order)]]
        out.append(_make_landmark(f"train_{j}", _facade(rng, _KINDS[kind], _sample_style(rng), tile, assets)))
    return out


def _generic_buildings(seed: int, assets: _Assets) -> list[_Landmark]:
    """Ordinary buildings (muted colours, flat or low roofs, sometimes a poster) used as clutter."""
    out = []
    for j in range(_N_GENERIC):
        rng = _rng(seed, _S_GENERIC, j)
        poster = assets.posters[int(rng.integers(len(assets.posters)))] if rng.random() < 0.4 else None
        kind = str(rng.choice(["flat", "flat", "pediment", "crenel"]))
        out.append(_make_landmark(f"generic_{j}", _facade(rng, kind, _sample_style(rng, muted=True), poster, assets)))
    return out


# ------------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class _Pose:
    """Camera pose of a planar facade: angles in degrees, ``scale`` = fraction of the frame it would fill."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    cx: float
    cy: float
    dist: float


@dataclass(frozen=True)
class _Look:
    """Photometric conditions of a shot."""

    blur: float
    brightness: float
    contrast: float
    gamma: float
    gains: tuple[float, float, float]
    noise: float

    @property
    def change(self) -> float:
        """Strength of the illumination change (0 = neutral), in log units."""
        logs = [self.brightness, self.contrast, self.gamma, *self.gains]
        return float(max(abs(np.log(v)) for v in logs))


def _homography(size: tuple[int, int], pose: _Pose, frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Map facade pixels to image pixels for a pinhole camera looking at the facade plane.

    Also returns the rotation, whose [2, 2] entry is the cosine of the viewing angle.
    """
    fw, fh = size
    ay, ap, ar = np.radians([pose.yaw, pose.pitch, pose.roll])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(ap), -np.sin(ap)], [0, np.sin(ap), np.cos(ap)]])
    rot_z = np.array([[np.cos(ar), -np.sin(ar), 0], [np.sin(ar), np.cos(ar), 0], [0, 0, 1]])
    rot = rot_z @ rot_y @ rot_x
    # Facade coordinates in units of its height, centred on the facade.
    to_plane = np.array([[1 / fh, 0, -fw / (2 * fh)], [0, 1 / fh, -0.5], [0, 0, 1]])
    extrinsic = np.column_stack([rot[:, 0], rot[:, 1], [0, 0, pose.dist]])
    pixels_per_facade_px = pose.scale * min(frame[0] / fw, frame[1] / fh)
    f = pixels_per_facade_px * fh * pose.dist
    intrinsic = np.array([[f, 0, pose.cx], [0, f, pose.cy], [0, 0, 1]])
    return intrinsic @ extrinsic @ to_plane, rot


def _warp(lm: _Landmark, hom: np.ndarray, frame: tuple[int, int]) -> Image.Image:
    """Warp the facade into the frame, reading from the mip level that avoids aliasing."""
    centre = hom[2] @ np.array([lm.size[0] / 2, lm.size[1] / 2, 1.0])
    zoom = np.sqrt(abs(np.linalg.det(hom)) / abs(centre) ** 3)  # image px per facade px at the centre
    level = int(np.clip(np.floor(-np.log2(max(zoom, 1e-6))), 0, _N_MIPS - 1))
    src = lm.mips[level]
    inv = np.linalg.inv(hom @ np.diag([2.0**level, 2.0**level, 1.0]))
    inv /= inv[2, 2]
    return src.transform(frame, Image.Transform.PERSPECTIVE, tuple(inv.ravel()[:8]), Image.Resampling.BILINEAR)


def _projected_area(lm: _Landmark, hom: np.ndarray) -> float:
    """Image area (pixels) of the whole facade silhouette, including parts outside the frame."""
    small = lm.mips[-1]
    step = lm.size[0] / small.size[0]
    alpha = np.asarray(small.getchannel(3), np.float32) / 255
    v, u = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
    denom = hom[2, 0] * (u + 0.5) * step + hom[2, 1] * (v + 0.5) * step + hom[2, 2]
    jac = abs(np.linalg.det(hom)) / np.abs(denom) ** 3
    return float((alpha * jac).sum() * step * step)


def _look(rng: np.random.Generator, strong: bool) -> _Look:
    """Mild photometric variation, or (``strong``) dusk/under-exposure, over-exposure or a colour cast."""
    brightness, gamma, spread = rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1), 0.08
    contrast = rng.uniform(0.6, 0.8) if strong else rng.uniform(0.85, 1.15)
    if strong:
        mode = int(rng.integers(3))
        if mode == 0:
            brightness, gamma = rng.uniform(0.45, 0.65), rng.uniform(1.2, 1.5)
        elif mode == 1:
            brightness = rng.uniform(1.45, 1.75)
        else:
            spread = 0.35
    gains = tuple(float(g) for g in np.exp(rng.uniform(-spread, spread, 3)))
    return _Look(rng.uniform(0, 0.8), brightness, contrast, gamma, gains, rng.uniform(0.0, 0.02))


def _sample_shot(rng: np.random.Generator, target: str, frame: tuple[int, int]) -> tuple[_Pose, _Look, str | None, int]:
    """Draw pose, look, heavy-occluder kind and number of small occluders aimed at a difficulty."""
    w, h = frame
    yaw, pitch, roll = rng.uniform(-20, 20), rng.uniform(-3, 14), rng.uniform(-4, 4)
    scale, dist = rng.uniform(0.5, 0.92), rng.uniform(2.2, 4.0)
    cx, cy = w * rng.uniform(0.38, 0.62), h * rng.uniform(0.4, 0.6)
    look, heavy, n_small = _look(rng, strong=False), None, int(rng.integers(0, 4))
    if target == "query":
        yaw, pitch, roll = rng.uniform(-10, 10), rng.uniform(0, 8), rng.uniform(-1.5, 1.5)
        scale = rng.uniform(0.55, 0.8)
        cx, cy, n_small = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55), int(rng.integers(0, 2))
    elif target == "hard":
        challenges = rng.choice(["view", "far", "crop", "occlude", "blur", "light"], int(rng.integers(1, 3)), False)
        for challenge in challenges:
            if challenge == "view":
                yaw, pitch, dist = rng.choice([-1, 1]) * rng.uniform(35, 60), rng.uniform(0, 22), rng.uniform(1.6, 2.4)
            elif challenge == "far":
                scale = rng.uniform(0.22, 0.35)
                cx, cy = w * rng.uniform(0.2, 0.8), h * rng.uniform(0.3, 0.7)
            elif challenge == "crop":
                scale = rng.uniform(1.1, 1.7)
                cx, cy = w * rng.uniform(0.1, 0.9), h * rng.uniform(0.2, 0.8)
            elif challenge == "occlude":
                heavy = str(rng.choice(["tree", "bus", "hedge"]))
            elif challenge == "blur":
                look = replace(look, blur=rng.uniform(1.8, 3.2))
            else:
                look = _look(rng, strong=True)
    elif target == "junk":
        mode = rng.integers(3)
        if mode == 0:  # a corner or detail of the facade, seen from very close
            scale = rng.uniform(2.2, 3.5)
            cx, cy = w * rng.uniform(-0.6, 1.6), h * rng.uniform(-0.6, 1.6)
        elif mode == 1:  # tiny, far away
            scale = rng.uniform(0.07, 0.13)
            cx, cy = w * rng.uniform(0.1, 0.9), h * rng.uniform(0.3, 0.7)
        else:  # mostly out of the frame
            side = rng.choice([-1, 1])
            cx, cy = w * (0.5 + side * rng.uniform(0.85, 1.1)), h * rng.uniform(0.3, 0.7)
    return _Pose(yaw, pitch, roll, scale, cx, cy, dist), look, heavy, n_small


def _label(visible: float, occluded: float, area: float, angle: float, look: _Look) -> str:
    """Revisited-protocol label of a database view of the query landmark, from what the view shows."""
    if visible < _JUNK_MAX_VISIBLE or area < _JUNK_MAX_AREA:
        return "junk"
    if (
        visible >= _EASY_MIN_VISIBLE
        and occluded <= _EASY_MAX_OCCLUDED
        and angle <= _EASY_MAX_ANGLE
        and area >= _EASY_MIN_AREA
        and look.blur <= _EASY_MAX_BLUR
        and look.change <= _EASY_MAX_LIGHT
    ):
        return "easy"
    return "hard"


@dataclass(frozen=True)
class _Shot:
    image: Image.Image
    label: str
    bbox: tuple[float, float, float, float]


def _landmark_shot(
    rng: np.random.Generator,
    lm: _Landmark,
    target: str,
    frame: tuple[int, int],
    generics: list[_Landmark],
    assets: _Assets,
) -> _Shot:
    """Photograph ``lm``; redraw the shot until its measured label matches ``target``."""
    w, h = frame
    for _ in range(100):
        pose, look, heavy, n_small = _sample_shot(rng, target, frame)
        hom, rot = _homography(lm.size, pose, frame)
        layer = _warp(lm, hom, frame)
        alpha = np.asarray(layer.getchannel(3), np.float32) / 255
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs) == 0:
            continue
        in_frame = float(alpha.sum())
        bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        horizon = float(np.clip(_project(hom, lm.size[0] / 2, lm.size[1])[1], h * 0.35, h))
        occ_rgb, occ_mask = _occluders(rng, frame, horizon, n_small, heavy, bbox, assets)
        occ = np.asarray(occ_mask, np.float32) / 255
        seen = float((alpha * (1 - occ)).sum())
        visible = seen / max(_projected_area(lm, hom), in_frame)
        angle = float(np.degrees(np.arccos(np.clip(abs(rot[2, 2]), 0, 1))))
        occluded = 1 - seen / in_frame
        label = _label(visible, occluded, seen / (w * h), angle, look)
        if target == "query":
            ok = visible >= 0.9 and occluded <= 0.05 and in_frame / _projected_area(lm, hom) >= 0.98
            label = "query" if ok else "reject"
        if label == target:
            break
    else:
        raise RuntimeError(f"could not draw a {target!r} view of {lm.name}")
    scene = _background(rng, frame, horizon, generics, n_buildings=int(rng.integers(0, 3)))
    scene = _composite(scene, np.asarray(layer, np.float32) * rng.uniform(0.75, 1.1), alpha)
    scene = _composite(scene, np.asarray(occ_rgb, np.float32) * occ[..., None], occ)
    return _Shot(_finish(rng, scene, look), label, bbox)


def _project(hom: np.ndarray, u: float, v: float) -> tuple[float, float]:
    x, y, z = hom @ np.array([u, v, 1.0])
    return x / z, y / z


def _composite(base: np.ndarray, premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1 - alpha[..., None]) + premultiplied[..., :3]


# Sky types: (top colour, horizon colour, cloud colour) as HSV.
_SKIES = (
    ((0.6, 0.55, 0.85), (0.58, 0.2, 0.97), (0.6, 0.02, 0.98)),
    ((0.6, 0.04, 0.72), (0.6, 0.02, 0.88), (0.6, 0.02, 0.8)),
    ((0.62, 0.35, 0.7), (0.08, 0.35, 0.97), (0.05, 0.15, 0.95)),
    ((0.57, 0.35, 0.95), (0.55, 0.1, 0.98), (0.6, 0.0, 1.0)),
)


def _background(
    rng: np.random.Generator, frame: tuple[int, int], horizon: float, generics: list[_Landmark], n_buildings: int
) -> np.ndarray:
    """Sky, distant skyline, receding ground and a few ordinary buildings, as a float RGB array."""
    w, h = frame
    assets = _assets()
    top, low, cloud = (np.array(_hsv(*c), np.float32) for c in _SKIES[int(rng.integers(len(_SKIES)))])
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] * (h / max(horizon, 1.0))
    img = np.broadcast_to(top * (1 - np.clip(t, 0, 1)) + low * np.clip(t, 0, 1), (h, w, 3)).copy()
    cover = 0.7 * _smooth_noise(rng, w, h, 5, stretch=2.5) + 0.3 * _smooth_noise(rng, w, h, 16, stretch=2.0)
    clouds = np.clip((cover - rng.uniform(0.45, 0.7)) * 4, 0, 0.9)[..., None]
    img = img * (1 - clouds) + cloud * clouds

    skyline = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(skyline)
    x = -rng.uniform(0, 30)
    while x < w:
        bw = rng.uniform(0.04, 0.15) * w
        d.rectangle((x, horizon - rng.uniform(0.03, 0.18) * h, x + bw, horizon), fill=255)
        x += bw
    haze = low * rng.uniform(0.6, 0.8)
    m = np.asarray(skyline, np.float32)[..., None] / 255
    img = img * (1 - m) + haze * m

    ground_h = int(round(h - horizon))
    if ground_h > 0:
        # A bilinear quad approximates the perspective of the ground plane: fine texture at the horizon.
        far = rng.uniform(0.5, 0.95) * 1024
        near = far * rng.uniform(0.15, 0.35)
        x0 = rng.uniform(0, 1024 - far)
        quad = (x0, 0, x0 + (far - near) / 2, 600, x0 + (far + near) / 2, 600, x0 + far, 0)
        material = assets.materials[int(rng.choice([_BRICK, _GRAVEL, _GRASS, _MOON]))]
        tex = np.asarray(
            material.transform((w, ground_h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR), np.float32
        )
        tex = (tex - tex.mean()) / (tex.std() + 1e-3)
        tint = np.array(
            _hsv(rng.choice([0.08, 0.1, 0.25, 0.0]), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.6)), np.float32
        )
        ground = tint * (1 + 0.25 * tex[..., None]) * np.linspace(0.85, 1.1, ground_h, dtype=np.float32)[:, None, None]
        mist = np.exp(-np.arange(ground_h, dtype=np.float32) / (0.06 * h))[:, None, None]
        img[h - ground_h :] = np.clip(ground * (1 - mist) + haze * mist, 0, 255)

    for _ in range(n_buildings):
        lm = generics[int(rng.integers(len(generics)))]
        pose = _Pose(
            rng.uniform(-50, 50),
            rng.uniform(0, 10),
            rng.uniform(-2, 2),
            rng.uniform(0.3, 0.9),
            w * rng.uniform(-0.1, 1.1),
            0.0,
            rng.uniform(2.2, 4.0),
        )
        hom, _ = _homography(lm.size, pose, frame)
        base_y = _project(hom, lm.size[0] / 2, lm.size[1])[1]
        hom = np.array([[1, 0, 0], [0, 1, horizon + rng.uniform(0, 0.08) * h - base_y], [0, 0, 1]]) @ hom
        layer = np.asarray(_warp(lm, hom, frame), np.float32)
        img = _composite(img, layer * rng.uniform(0.7, 1.05), layer[..., 3] / 255)
    return img


def _occluders(
    rng: np.random.Generator,
    frame: tuple[int, int],
    horizon: float,
    n_small: int,
    heavy: str | None,
    box: tuple[float, float, float, float],
    assets: _Assets,
) -> tuple[Image.Image, Image.Image]:
    """Foreground objects (people, cars, poles, trees, hedges) as an RGB layer and its mask.

    ``heavy`` names one large object placed in front of ``box`` (the landmark's bounding box).
    """
    w, h = frame
    rgb = Image.new("RGB", frame)
    mask = Image.new("L", frame, 0)
    dr, dm = ImageDraw.Draw(rgb), ImageDraw.Draw(mask)

    def draw(shape: str, xy: tuple[float, ...], fill: tuple[int, int, int], **kw: float) -> None:
        getattr(dr, shape)(xy, fill=fill, **kw)
        getattr(dm, shape)(xy, fill=255, **kw)

    ground = max(horizon, h * 0.6)
    items: list[tuple[str, float, float, float | None]] = [
        (
            str(rng.choice(["person", "person", "car", "pole", "tree"])),
            rng.uniform(0, w),
            rng.uniform(ground, h * 1.05),
            None,
        )
        for _ in range(n_small)
    ]
    if heavy is not None:
        x0, y0, x1, y1 = box
        extent = rng.uniform(0.7, 1.1) * max(x1 - x0, y1 - y0)
        items.append((heavy, rng.uniform(x0 + 0.3 * (x1 - x0), x1 - 0.3 * (x1 - x0)), min(h * 1.02, y1), extent))
    for kind, x, base, extent in items:
        colour = _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
        if kind == "person":
            ph = h * rng.uniform(0.15, 0.3)
            pw = ph * 0.28
            draw("rounded_rectangle", (x - pw / 2, base - ph * 0.85, x + pw / 2, base), colour, radius=pw / 3)
            draw("ellipse", (x - pw * 0.3, base - ph, x + pw * 0.3, base - ph * 0.8), _hsv(0.07, 0.4, 0.6))
        elif kind in ("car", "bus"):
            cw = extent * rng.uniform(0.9, 1.2) if extent else w * rng.uniform(0.2, 0.32)
            ch = cw * (0.5 if extent else 0.38)
            draw("rounded_rectangle", (x - cw / 2, base - ch, x + cw / 2, base - ch * 0.12), colour, radius=ch / 5)
            draw("rectangle", (x - cw * 0.4, base - ch * 0.9, x + cw * 0.4, base - ch * 0.6), (40, 50, 60))
            for wx in (x - cw * 0.3, x + cw * 0.3):
                draw("ellipse", (wx - ch * 0.15, base - ch * 0.3, wx + ch * 0.15, base), (20, 20, 20))
        elif kind == "pole":
            ph = h * rng.uniform(0.4, 0.8)
            draw("rectangle", (x - 3, base - ph, x + 3, base), (45, 45, 45))
            draw("ellipse", (x - 9, base - ph - 10, x + 9, base - ph + 4), (45, 45, 45))
        else:  # trees and hedges: clusters of textured foliage blobs
            crown = Image.new("L", frame, 0)
            dc = ImageDraw.Draw(crown)
            if kind == "hedge":
                span, height = extent * rng.uniform(0.9, 1.3), extent * rng.uniform(0.35, 0.55)
                for bx in np.arange(x - span / 2, x + span / 2, height * 0.4):
                    r = height * rng.uniform(0.35, 0.5)
                    dc.ellipse((bx - r, base - height + rng.uniform(0, 0.2) * height - r * 0.3, bx + r, base), fill=255)
            else:
                th = extent if extent else h * rng.uniform(0.35, 0.7)
                for _ in range(int(rng.integers(5, 9))):
                    r = th * rng.uniform(0.18, 0.3)
                    ex, ey = x + rng.uniform(-0.3, 0.3) * th, base - th * rng.uniform(0.45, 0.85)
                    dc.ellipse((ex - r, ey - r, ex + r, ey + r), fill=255)
                draw("rectangle", (x - th * 0.04, base - th * 0.5, x + th * 0.04, base), _hsv(0.07, 0.5, 0.3))
            leaves = _material_crop(rng, assets.materials[_GRASS], w, h, rng.uniform(1.5, 2.5))
            green = np.array(_hsv(rng.uniform(0.2, 0.33), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.5)), np.float32)
            light = np.linspace(1.15, 0.8, h, dtype=np.float32)[:, None, None]
            foliage = np.clip(green * (1 + 0.35 * leaves[..., None]) * light, 0, 255).astype(np.uint8)
            rgb.paste(Image.fromarray(foliage), (0, 0), crown)
            mask.paste(255, (0, 0), crown)
    return rgb, mask


def _finish(rng: np.random.Generator, scene: np.ndarray, look: _Look) -> Image.Image:
    """Apply camera effects (blur, exposure, colour cast, noise) and quantise to 8 bits."""
    img = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    if look.blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(look.blur))
    arr = np.asarray(img, np.float32) / 255
    arr = arr * np.array(look.gains, np.float32) * look.brightness
    arr = (arr - arr.mean()) * look.contrast + arr.mean()
    arr = np.clip(arr, 0, 1) ** look.gamma
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1 - 0.25 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2
    arr = arr * vignette[..., None].astype(np.float32) + rng.normal(0, look.noise, arr.shape).astype(np.float32)
    return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))


def _clutter_shot(rng: np.random.Generator, frame: tuple[int, int], generics: list[_Landmark]) -> Image.Image:
    """A street scene with ordinary buildings only (a database distractor)."""
    h = frame[1]
    horizon = h * rng.uniform(0.55, 0.95)
    scene = _background(rng, frame, horizon, generics, n_buildings=int(rng.integers(1, 5)))
    occ_rgb, occ_mask = _occluders(rng, frame, horizon, int(rng.integers(0, 5)), None, (0, 0, 0, 0), _assets())
    occ = np.asarray(occ_mask, np.float32) / 255
    scene = _composite(scene, np.asarray(occ_rgb, np.float32) * occ[..., None], occ)
    look = _look(rng, strong=bool(rng.random() < 0.3))
    return _finish(rng, scene, look)


def _frame(rng: np.random.Generator, config: DemoConfig) -> tuple[int, int]:
    w, h = config.image_size
    return (h, w) if rng.random() < 0.25 else (w, h)


# ------------------------------------------------------------------------------------------- generation


def _targets(rng: np.random.Generator, n: int) -> list[str]:
    """Intended difficulty of each database view: at least one easy and one hard, ~20% junk."""
    n_junk = min(n - 2, round(0.2 * n))
    rest = n - 2 - n_junk
    targets = ["easy", "hard"] + ["junk"] * n_junk + ["easy", "hard"] * (rest // 2) + ["easy"] * (rest % 2)
    return [targets[i] for i in rng.permutation(n)]


def _generate(root: Path, config: DemoConfig, fingerprint: str, progress: bool) -> None:
    assets = _assets()
    tile_order = _rng(config.seed, _S_TILES).permutation(len(assets.tiles))
    test = _test_landmarks(config, assets, tile_order)
    train = _train_landmarks(config, assets, tile_order)
    overlaps = _overlap_choice(config)
    classes = [(lm, _S_TRAIN, j) for j, lm in enumerate(train)] + [
        (test[i], _S_OVERLAP, k) for k, i in enumerate(overlaps)
    ]
    generics = _generic_buildings(config.seed, assets)
    n_q, n_v = config.queries_per_landmark, config.views_per_landmark
    total = len(test) * (n_q + n_v) + config.n_distractors + len(classes) * config.train_views_per_landmark
    bar = tqdm(total=total, desc="demo data", unit="img", disable=not progress)

    jpg = root / DEMO_DATASET / "jpg"
    jpg.mkdir(parents=True)
    queries: list[tuple[str, int, tuple[float, float, float, float]]] = []
    db: list[tuple[str, int, str]] = []  # (name, landmark index or -1, label)
    for li, lm in enumerate(test):
        for q in range(n_q):
            rng = _rng(config.seed, _S_QUERY, li, q)
            shot = _landmark_shot(rng, lm, "query", _frame(rng, config), generics, assets)
            name = f"{lm.name}_{q:06d}"
            _save(shot.image, jpg / f"{name}.jpg", config)
            queries.append((name, li, shot.bbox))
            bar.update()
        for v, target in enumerate(_targets(_rng(config.seed, _S_PLAN, li), n_v)):
            rng = _rng(config.seed, _S_DB, li, v)
            shot = _landmark_shot(rng, lm, target, _frame(rng, config), generics, assets)
            name = f"{lm.name}_{n_q + v:06d}"
            _save(shot.image, jpg / f"{name}.jpg", config)
            db.append((name, li, shot.label))
            bar.update()
    for k in range(config.n_distractors):
        rng = _rng(config.seed, _S_CLUTTER, k)
        name = f"clutter_{k:06d}"
        _save(_clutter_shot(rng, _frame(rng, config), generics), jpg / f"{name}.jpg", config)
        db.append((name, -1, ""))
        bar.update()

    db.sort()
    gnd = []
    for _, li, bbox in queries:
        labels = {
            key: [i for i, (_, lj, lab) in enumerate(db) if lj == li and lab == key] for key in ("easy", "hard", "junk")
        }
        if not labels["easy"] or not labels["hard"]:
            raise RuntimeError(f"landmark {test[li].name} lacks an easy or a hard positive")
        gnd.append({"bbx": [float(c) for c in bbox], **labels})
    with open(root / DEMO_DATASET / f"gnd_{DEMO_DATASET}.pkl", "wb") as f:
        pickle.dump({"imlist": [n for n, _, _ in db], "qimlist": [n for n, _, _ in queries], "gnd": gnd}, f, protocol=4)

    train_ids = _write_train(root / "train", config, classes, generics, assets, bar)
    bar.close()
    label_counts = {key: sum(lab == key for _, _, lab in db) for key in ("easy", "hard", "junk")}
    info = {
        "generator_version": _GENERATOR_VERSION,
        "fingerprint": fingerprint,
        "config": asdict(config),
        "counts": {
            "test_landmarks": len(test),
            "queries": len(queries),
            "database_images": len(db),
            "distractors": config.n_distractors,
            "database_views_by_label": label_counts,
            "train_landmarks": len(classes),
            "train_images": len(classes) * config.train_views_per_landmark,
            "overlap_landmarks": len(overlaps),
        },
        "test_landmarks": [lm.name for lm in test],
        "hard_negative_pairs": [[test[i - 1].name, test[i].name] for i in range(len(test)) if i % 4 == 1],
        "train_landmark_ids": sorted(train_ids),
        "overlap_landmarks": {str(lid): test[i].name for lid, i in zip(train_ids[len(train) :], overlaps, strict=True)},
    }
    (root / "demo_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (root / _MARKER).write_text(fingerprint)


def _overlap_choice(config: DemoConfig) -> list[int]:
    """Indices of the distinct test landmarks that the planted overlap classes photograph."""
    rng = _rng(config.seed, _S_OVERLAP)
    return [int(i) for i in rng.choice(config.n_test_landmarks, config.n_overlap_landmarks, replace=False)]


def _write_train(
    root: Path,
    config: DemoConfig,
    classes: list[tuple[_Landmark, int, int]],
    generics: list[_Landmark],
    assets: _Assets,
    bar: tqdm,
) -> list[int]:
    """Write the GLDv2-style training split; return the landmark id of each class, in ``classes`` order.

    A class is ``(landmark, stream, index)``: its view ``v`` is drawn from the stream ``(seed, stream, index, v)``.
    Landmark ids are random and rows are written in id order, so neither ids nor file order tell the classes'
    origin.
    """
    root.mkdir(parents=True)
    id_rng = _rng(config.seed, _S_IDS)
    landmark_ids = [int(i) for i in id_rng.choice(200_000, size=len(classes), replace=False)]
    seen: set[str] = set()
    rows = []
    for j in np.argsort(landmark_ids):
        lm, stream, index = classes[j]
        ids = []
        for v in range(config.train_views_per_landmark):
            image_id = id_rng.bytes(8).hex()
            while image_id in seen:
                image_id = id_rng.bytes(8).hex()
            seen.add(image_id)
            rng = _rng(config.seed, stream, index, v)
            target = "easy" if v % 2 == 0 else "hard"
            shot = _landmark_shot(rng, lm, target, _frame(rng, config), generics, assets)
            path = root / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            _save(shot.image, path, config)
            ids.append(image_id)
            bar.update()
        rows.append((landmark_ids[j], ids))
    with open(root / "train_clean.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["landmark_id", "images"])
        writer.writerows([lid, " ".join(ids)] for lid, ids in rows)
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url", "landmark_id"])
        writer.writerows([i, f"https://example.invalid/{i}.jpg", lid] for lid, ids in rows for i in ids)
    return landmark_ids


def _save(img: Image.Image, path: Path, config: DemoConfig) -> None:
    img.save(path, format="JPEG", quality=config.jpeg_quality)
