"""Deterministic synthetic landmark-retrieval data for the offline demo.

The project has to run end to end without downloading ROxford/RParis or GLDv2, so this module renders a
small stand-in: planar landmark "facades" (procedural architecture around real photographic murals shipped
by scikit-image and matplotlib) photographed from many viewpoints into cluttered street scenes. It writes

* ``<out>/demo/``: a test set in the revisited Oxford/Paris format (``gnd_demo.pkl`` + ``jpg/``), with
  easy/hard/junk positives measured from each view's rendering parameters;
* ``<out>/train/``: a training split in the Google-Landmarks-v2 layout, of *other* landmarks plus a few
  planted *overlap* classes: new photographs of test landmarks under random landmark ids. They imitate, on
  purpose, the landmarks GLDv2-clean shares with ROxford/RParis (CiDeR, CVPR 2024), so that
  :mod:`irlib.data.overlap` can be tested against a known answer. ``train_label_to_category.csv`` names every
  class with a Wikimedia-style category URL: the overlap classes carry their test landmark's name (plainly, as a
  French synonym with accents and the city, or URL-encoded), one ordinary class names a test landmark too although
  its photos do not show it (found by text only), and two are near misses (a test landmark's name plus another
  place, like "Christ Church, New Zealand" for Oxford's), so that :mod:`irlib.data.landmark_names` can be tested;
* ``<out>/uned/``: a small set in the UnED layout (``info_files/<domain>/<split>.json`` + ``images/``) of a few
  real UnED domain names (rendered cars, garments and landmark shots), with class ids restarting at 0 in every
  domain and the same id given a look-alike colour in every domain (a cross-domain match is not a hit);
* ``<out>/ilias/``: a small set in the ILIAS layout (``ilias_core/<instance>/query|pos/``, ``image_ids/``,
  ``misc/taxonomy.json``) of product-like objects, photographed on clean backgrounds as queries and in clutter at
  several scales as positives, with webdataset tar shards of distractors (``yfcc100m/NNNNNN.tar``);
* ``<out>/demo_info.json``: config, counts, generator version and the planted overlaps
  (``overlap_landmarks``: training ``landmark_id`` -> test landmark name), the test landmarks' names
  (``test_landmark_names``: key -> [name, synonym], ``test_city``) and the planted name matches
  (``text_only_landmarks``, ``name_decoys``: training ``landmark_id`` -> test landmark key).

Everything is drawn from ``numpy.random.default_rng`` streams keyed by ``(seed, purpose, index)``, so the
same config always produces byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from irlib.data.uned import DOMAINS, KNN_SPLITS

__all__ = ["DEMO_DATASET", "DemoConfig", "make_demo_data"]

DEMO_DATASET = "demo"

_GENERATOR_VERSION = 5  # 5: train_label_to_category.csv and the test landmarks' names (no image changed)
_MARKER = ".demo_complete"
_OUTPUTS = (DEMO_DATASET, "train", "uned", "ilias", "demo_info.json")

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
_S_UNED, _S_ILIAS = 11, 12  # appended: the UnED and ILIAS sets read no earlier stream
_S_NAMES = 13  # appended: the landmark names read no earlier stream

# Names of the demo's landmarks (for train_label_to_category.csv and the text step of overlap detection): the test
# landmarks are "<proper> <Kind>" (French synonym "<Genre> <proper>") in the fictitious city _CITY; the training
# landmarks take their proper names from a pool that shares no word with the test pool.
_CITY = "Demoville"
_FRENCH = {
    "tower": "Tour",
    "cathedral": "Cathédrale",
    "palace": "Palais",
    "museum": "Musée",
    "gate": "Porte",
    "castle": "Château",
    "temple": "Temple",
    "station": "Gare",
    "chapel": "Chapelle",
    "observatory": "Observatoire",
    "theatre": "Théâtre",
    "fortress": "Forteresse",
    "library": "Bibliothèque",
    "basilica": "Basilique",
    "pavilion": "Pavillon",
    "belfry": "Beffroi",
}
_TEST_PROPER = (
    "Saint-Aubin", "Sainte-Hélène", "Bellecour", "Montclair", "Valmérac", "Aurèle", "Beaumarais", "Corvaine",
    "Ostrelle", "Léonore", "Marbrevaux", "Pérignac", "Quinsonne", "Rivaudière", "Sauvelade", "Vérange",
)  # fmt: skip
_TRAIN_PROPER = (
    "Ashcombe", "Birchwick", "Coldharbour", "Dunmere", "Elmstead", "Fernhollow", "Glenmarrow", "Hollinsby",
    "Ivymoor", "Kestrel Hill", "Larkspur", "Millbrook", "Northwold", "Oakhurst", "Pennycross", "Quarrendon",
    "Redwater", "Stonebridge", "Thornbury", "Upperton", "Westerleigh", "Yarrowby", "Brackenfield", "Cindermoor",
)  # fmt: skip
_ELSEWHERE = ("Nouvelle-Calédonie", "Port Ellery", "Lake Marrow")  # places a decoy's category adds
_COMMONS = "http://commons.wikimedia.org/wiki/Category:"

# Roof height of a facade as a fraction of its width, per silhouette style.
_ROOF_HEIGHT = {"gable": 0.4, "pediment": 0.18, "dome": 0.45, "crenel": 0.16, "gate": 0.2, "steps": 0.3}

# Gateway opening: width as a fraction of the facade width, arch springing line as a fraction of its height.
_GATE_WIDTH, _GATE_SPRING = 0.22, 0.7

_UNED_DOMAINS = ("cars", "inshop", "gldv2")  # the UnED domains the demo can draw (keys of _UNED_RENDERERS)
_MAX_ILIAS_INSTANCES = 30  # each instance's print is its own photo region (41), leaving some for look-alikes

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
    """All knobs of the demo dataset; the defaults give 300 test and 216 training images, 344 UnED images and
    an ILIAS set of 12 instances (about 60 core images) with 150 distractors.

    Each landmark's mural is a distinct region of a bundled photo; there are 41 such regions, so test and
    training landmarks share no photographic content while ``n_test_landmarks + n_train_landmarks <= 41``.
    The exception is deliberate: the ``n_overlap_landmarks`` planted training classes photograph distinct test
    landmarks anew (``train_views_per_landmark`` images each, from their own random stream).

    UnED, per domain of ``uned_domains``: ``uned_train_classes`` (train), then ``uned_val_classes`` (val), then
    ``uned_test_classes`` classes, ``uned_views`` images each. A test class of a domain whose kNN query split is its
    index split (``cars``) puts every view in ``test.json``; otherwise (``inshop``, ``gldv2``) its first view is the
    query in ``test.json`` and the others go to ``index.json``, with ``uned_index_only_classes`` more classes that
    only the index holds. ILIAS: ``ilias_instances`` instances, ``ilias_distractors`` distractors in ``ilias_shards``
    tar shards.
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
    uned_domains: tuple[str, ...] = ("cars", "inshop", "gldv2")
    uned_train_classes: int = 10
    uned_val_classes: int = 4
    uned_test_classes: int = 12
    uned_index_only_classes: int = 4
    uned_views: int = 4
    ilias_instances: int = 12
    ilias_distractors: int = 150
    ilias_shards: int = 3

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
        domains = tuple(self.uned_domains)
        if not domains or len(set(domains)) != len(domains) or not set(domains) <= set(_UNED_DOMAINS):
            raise ValueError(f"uned_domains must be distinct names from {_UNED_DOMAINS}, got {domains}")
        object.__setattr__(self, "uned_domains", domains)
        if min(self.uned_train_classes, self.uned_val_classes, self.uned_test_classes) < 1:
            raise ValueError("uned_train_classes, uned_val_classes and uned_test_classes must be >= 1")
        if self.uned_index_only_classes < 0:
            raise ValueError("uned_index_only_classes must be non-negative")
        if self.uned_views < 2:
            raise ValueError("uned_views must be >= 2 (a kNN query needs another view of its class in the index)")
        if not 1 <= self.ilias_instances <= _MAX_ILIAS_INSTANCES:
            raise ValueError(f"ilias_instances must be in [1, {_MAX_ILIAS_INSTANCES}], got {self.ilias_instances}")
        if not 1 <= self.ilias_shards <= self.ilias_distractors:
            raise ValueError("need 1 <= ilias_shards <= ilias_distractors (every tar shard holds a distractor)")


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
    total += _uned_total(config) + _ilias_total(config)
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
    names = _landmark_names(config, test, overlaps, train_ids)
    _write_categories(root / "train" / "train_label_to_category.csv", names.categories)
    uned_counts = _write_uned(root / "uned", config, generics, assets, bar)
    ilias_counts = _write_ilias(root / "ilias", config, generics, assets, bar)
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
            "uned": uned_counts,
            "ilias": ilias_counts,
        },
        "test_landmarks": [lm.name for lm in test],
        "hard_negative_pairs": [[test[i - 1].name, test[i].name] for i in range(len(test)) if i % 4 == 1],
        "train_landmark_ids": sorted(train_ids),
        "overlap_landmarks": {str(lid): test[i].name for lid, i in zip(train_ids[len(train) :], overlaps, strict=True)},
        "test_city": _CITY,
        "test_landmark_names": names.test_names,
        "text_only_landmarks": {str(k): v for k, v in names.text_only.items()},
        "name_decoys": {str(k): v for k, v in names.decoys.items()},
    }
    (root / "demo_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (root / _MARKER).write_text(fingerprint)


@dataclass(frozen=True)
class _Names:
    test_names: dict[str, list[str]]  # test landmark key -> [name, French synonym]
    categories: dict[int, str]  # training landmark id -> category URL
    text_only: dict[int, str]  # training landmark id -> key of the test landmark its category names
    decoys: dict[int, str]  # training landmark id -> key of the test landmark its category nearly names


def _test_names(test: list[_Landmark]) -> dict[str, list[str]]:
    out = {}
    for i, lm in enumerate(test):
        kind = lm.name.rsplit("_", 1)[0]
        proper = _TEST_PROPER[i % len(_TEST_PROPER)]
        if i >= len(_TEST_PROPER):  # a new last word ("Aurèleville"), so that no name holds another's words
            k = i // len(_TEST_PROPER) - 1
            proper += ("ville", "bourg", "court", "val", "mont")[k % 5] + (str(k // 5 + 1) if k >= 5 else "")
        out[lm.name] = [f"{proper} {kind.title()}", f"{_FRENCH[kind]} {proper}"]
    return out


def _commons(title: str, encode: bool = False) -> str:
    """The category URL of ``title``; ``encode`` percent-encodes it (accents and punctuation: ``%C3%A9``, ``%2C``)."""
    title = title.replace(" ", "_")
    return _COMMONS + (urllib.parse.quote(title, safe="_") if encode else title)


def _landmark_names(config: DemoConfig, test: list[_Landmark], overlaps: list[int], train_ids: list[int]) -> _Names:
    """Category names of the training classes (in ``train_ids`` order: ordinary classes, then overlap classes).

    Overlap class ``k`` names its test landmark in style ``k % 3``: the English name, the French synonym with the
    city in parentheses, the French synonym URL-encoded. Of the ordinary classes (drawn from their own stream), one
    names a test landmark that no class photographs when there is one (URL-encoded, with the city: text evidence
    only) and two are decoys: a test landmark's name with another place added (the first names overlap 0's).
    """
    test_names = _test_names(test)
    keys = [lm.name for lm in test]
    kinds = list(_KINDS)
    n_train = config.n_train_landmarks
    categories: dict[int, str] = {}
    for j in range(n_train):
        kind = kinds[int(_rng(config.seed, _S_TRAIN_LM, j).integers(len(kinds)))]  # the draw _train_landmarks made
        proper = _TRAIN_PROPER[j % len(_TRAIN_PROPER)]
        proper += f" {j // len(_TRAIN_PROPER) + 1}" if j >= len(_TRAIN_PROPER) else ""
        categories[train_ids[j]] = _commons(f"{proper} {kind.title()}")
    for k, i in enumerate(overlaps):
        english, french = test_names[keys[i]]
        title = (english, f"{french} ({_CITY})", french)[k % 3]
        categories[train_ids[n_train + k]] = _commons(title, encode=k % 3 == 2)
    rng = _rng(config.seed, _S_NAMES)
    roles = [int(j) for j in rng.permutation(n_train)[:3]]
    text_only: dict[int, str] = {}
    decoys: dict[int, str] = {}
    if roles:
        free = [i for i in range(len(test)) if i not in overlaps] or list(range(len(test)))
        i = free[int(rng.integers(len(free)))]
        lid = train_ids[roles[0]]
        categories[lid] = _commons(f"{test_names[keys[i]][1]}, {_CITY}", encode=True)
        text_only[lid] = keys[i]
    for d, j in enumerate(roles[1:]):
        i = overlaps[0] if d == 0 and overlaps else int(rng.integers(len(test)))
        english, french = test_names[keys[i]]
        title = f"{english} ({_ELSEWHERE[d]})" if d == 0 else f"Old {english}, {_ELSEWHERE[d]}"
        lid = train_ids[j]
        categories[lid] = _commons(title)
        decoys[lid] = keys[i]
    return _Names(test_names, dict(sorted(categories.items())), text_only, decoys)


def _write_categories(path: Path, categories: dict[int, str]) -> None:
    """``train_label_to_category.csv`` as GLDv2 ships it: ``landmark_id,category``, ids ascending."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["landmark_id", "category"])
        writer.writerows(categories.items())


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


def _jpeg_bytes(img: Image.Image, config: DemoConfig) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=config.jpeg_quality)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ sprites & scenes


class _Canvas:
    """An RGB drawing and its coverage mask, drawn together: the sprites of cars, garments and objects."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.rgb = Image.new("RGB", size)
        self.mask = Image.new("L", size, 0)
        self._rgb, self._mask = ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.mask)

    def draw(self, shape: str, xy: object, fill: tuple[int, int, int], *, cover: bool = True, **kw: float) -> None:
        """Draw an ``ImageDraw`` shape; ``cover=False`` paints details without growing the mask."""
        getattr(self._rgb, shape)(xy, fill=fill, **kw)
        if cover:
            getattr(self._mask, shape)(xy, fill=255, **kw)

    def sprite(self, name: str, shading: np.ndarray | None = None) -> _Landmark:
        """The drawing as a mip-mapped RGBA sprite, optionally multiplied by a ``(h, w)`` or ``(h, w, 3)`` shading."""
        arr = np.asarray(self.rgb, np.float32)
        if shading is not None:
            arr = arr * (shading[..., None] if shading.ndim == 2 else shading)
        rgba = np.dstack([np.clip(arr, 0, 255).astype(np.uint8), np.asarray(self.mask)])
        return _make_landmark(name, Image.fromarray(rgba, "RGBA"))


def _cylinder(w: int, h: int, x0: float = 0, x1: float | None = None) -> np.ndarray:
    """``(h, w)`` shading of a vertical cylinder spanning columns ``x0..x1``: bright off-centre, dark at the rims."""
    x1 = w if x1 is None else x1
    t = np.clip((np.arange(w, dtype=np.float32) + 0.5 - x0) / (x1 - x0), 0, 1)
    profile = 0.55 + 0.6 * np.clip(np.sin(np.pi * t), 0, 1) ** 0.7 + 0.25 * np.exp(-(((t - 0.35) / 0.08) ** 2))
    return np.broadcast_to(profile, (h, w))


def _place(lm: _Landmark, pose: _Pose, frame: tuple[int, int], flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Warp a sprite into the frame (mirrored with ``flip``): premultiplied ``(h, w, 4)`` layer and ``(h, w)`` alpha."""
    hom, _ = _homography(lm.size, pose, frame)
    if flip:
        hom = hom @ np.array([[-1.0, 0, lm.size[0]], [0, 1, 0], [0, 0, 1]])
    layer = np.asarray(_warp(lm, hom, frame), np.float32)
    return layer, layer[..., 3] / 255


def _fill_scale(lm: _Landmark, frame: tuple[int, int], area: float) -> float:
    """``_Pose.scale`` at which a sprite's bounding rectangle covers the fraction ``area`` of the frame (head-on)."""
    (fw, fh), (w, h) = lm.size, frame
    return float(np.sqrt(area * w * h / (fw * fh)) / min(w / fw, h / fh))


def _shadow(scene: np.ndarray, alpha: np.ndarray, dx: float, dy: float, strength: float) -> np.ndarray:
    """Darken ``scene`` under a blurred copy of ``alpha`` shifted by ``(dx, dy)`` pixels."""
    mask = Image.fromarray((alpha * 255).astype(np.uint8)).transform(
        (alpha.shape[1], alpha.shape[0]), Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy)
    )
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)), np.float32) / 255
    return scene * (1 - strength * soft[..., None])


def _studio(rng: np.random.Generator, frame: tuple[int, int]) -> np.ndarray:
    """A clean studio backdrop (light, nearly uniform, with a soft gradient and sometimes a floor line)."""
    w, h = frame
    top = np.array(_hsv(rng.random(), rng.uniform(0, 0.12), rng.uniform(0.86, 0.98)), np.float32)
    bottom = top * rng.uniform(0.82, 0.98)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    if rng.random() < 0.4:
        img[int(h * rng.uniform(0.7, 0.85)) :] *= rng.uniform(0.85, 0.95)
    return img


def _indoor(rng: np.random.Generator, frame: tuple[int, int], assets: _Assets) -> np.ndarray:
    """A wall above a textured table top, as a float RGB array."""
    w, h = frame
    wall = np.array(_hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.85)), np.float32)
    img = wall * (0.85 + 0.3 * _smooth_noise(rng, w, h, 4))[..., None]
    edge = int(h * rng.uniform(0.25, 0.6))
    tex = _material_crop(rng, assets.materials[int(rng.integers(len(assets.materials)))], w, h - edge, 1.0)
    wood = np.array(_hsv(rng.uniform(0.02, 0.14), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.75)), np.float32)
    img[edge:] = wood * (1 + 0.2 * tex[..., None])
    return np.clip(img, 0, 255)


def _clutter_items(rng: np.random.Generator, frame: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` small everyday shapes (boxes, discs, pens, papers) in random colours: premultiplied RGB and alpha."""
    w, h = frame
    canvas = _Canvas(frame)
    for _ in range(n):
        s = min(w, h) * rng.uniform(0.04, 0.16)
        x, y = rng.uniform(-0.05, 1.05) * w, rng.uniform(0.1, 1.05) * h
        colour = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
        shape = int(rng.integers(4))
        if shape == 0:
            canvas.draw("rectangle", (x, y, x + s * rng.uniform(0.5, 1.5), y + s * rng.uniform(0.5, 1.5)), colour)
        elif shape == 1:
            canvas.draw("ellipse", (x, y, x + s, y + s * rng.uniform(0.4, 1.0)), colour)
        elif shape == 2:
            canvas.draw("line", (x, y, x + s * rng.uniform(-1.5, 1.5), y + s * rng.uniform(-1, 1)), colour, width=3)
        else:
            pts = [(x + s * rng.uniform(-0.6, 0.6), y + s * rng.uniform(-0.6, 0.6)) for _ in range(3)]
            canvas.draw("polygon", pts, colour)
    alpha = np.asarray(canvas.mask, np.float32) / 255
    return np.asarray(canvas.rgb, np.float32) * alpha[..., None], alpha


# ------------------------------------------------------------------------------------------------ UnED


def _class_colour(class_id: int) -> tuple[float, float, float]:
    """HSV colour of a UnED class id, the same in every domain, so equal ids of two domains look alike; classes
    ``2m`` and ``2m + 1`` get close colours (look-alike classes within a domain)."""
    pair, odd = divmod(class_id, 2)
    return (
        (0.07 + 0.618034 * pair + 0.05 * odd) % 1.0,
        0.5 + 0.4 * ((0.37 * pair) % 1.0) - 0.08 * odd,
        0.5 + 0.4 * ((0.71 * pair + 0.3) % 1.0) - 0.06 * odd,
    )


# Car body style: (cabin start, cabin end, front pillar slant, rear pillar slant, cabin height), sprite fractions.
_CAR_CABINS = {
    "sedan": (0.24, 0.72, 0.16, 0.1, 0.26),
    "coupe": (0.28, 0.7, 0.2, 0.16, 0.22),
    "hatch": (0.14, 0.7, 0.16, 0.04, 0.28),
    "suv": (0.1, 0.75, 0.12, 0.03, 0.32),
    "van": (0.05, 0.82, 0.12, 0.01, 0.36),
    "pickup": (0.34, 0.68, 0.13, 0.01, 0.3),
}


def _car_model(rng: np.random.Generator, class_id: int, assets: _Assets) -> _Landmark:
    """Side view of one car model, front to the right: body style, colour, wheels, stripe and lights."""
    w, h = 256, 128
    kind = str(rng.choice(list(_CAR_CABINS)))
    start, end, slant_f, slant_r, cabin_h = _CAR_CABINS[kind]
    hue, sat, val = _class_colour(class_id)
    body = _hsv(hue, sat, val)
    dark = tuple(int(c * 0.55) for c in body)
    roof = body if rng.random() < 0.7 else _hsv(0, 0, rng.choice([0.12, 0.95]))
    glass = _hsv(0.58, 0.25, rng.uniform(0.15, 0.4))
    r = h * rng.uniform(0.12, 0.16)
    axle = h - 2 - r
    sill = axle + 0.2 * r
    belt = axle - h * rng.uniform(0.2, 0.28) * (1.2 if kind in ("suv", "van") else 1.0)
    top = belt - h * cabin_h
    nose = w * rng.uniform(0.03, 0.1)
    canvas = _Canvas((w, h))
    outline = [(3, belt + 4), (6, belt), (w - 4 - nose, belt), (w - 3, belt + 10), (w - 3, sill - 5), (w - 10, sill)]
    canvas.draw("polygon", [*outline, (10, sill), (3, sill - 6)], body)
    x0, x1 = start * w, end * w
    canvas.draw("polygon", [(x0, belt + 1), (x0 + slant_r * w, top), (x1 - slant_f * w, top), (x1, belt + 1)], roof)
    pane = [(x0 + 6, belt - 2), (x0 + slant_r * w + 5, top + 5), (x1 - slant_f * w - 3, top + 5), (x1 - 7, belt - 2)]
    canvas.draw("polygon", pane, glass)
    pillar = x0 + (x1 - x0) * rng.uniform(0.45, 0.6)
    canvas.draw("line", (pillar, top + 3, pillar, belt), roof, width=5)
    if rng.random() < 0.45:
        y = belt + (sill - belt) * rng.uniform(0.3, 0.6)
        stripe = _hsv(hue + 0.5, 0.2, 0.95) if rng.random() < 0.5 else (25, 25, 25)
        canvas.draw("rectangle", (8, y, w - 8, y + rng.uniform(3, 7)), stripe, cover=False)
    for x in (pillar, x0 + 2):
        canvas.draw("line", (x, belt + 2, x, sill - 4), dark, cover=False, width=1)
    canvas.draw("rectangle", (w - 15, belt + 5, w - 5, belt + 12), (250, 240, 190), cover=False)
    canvas.draw("rectangle", (4, belt + 5, 11, belt + 14), (200, 30, 30), cover=False)
    rim = _hsv(0.12, rng.choice([0.0, 0.0, 0.5]), rng.choice([0.25, 0.75, 0.8]))
    spokes, rim_r = int(rng.integers(4, 9)), r * rng.uniform(0.5, 0.7)
    for cx in (w * rng.uniform(0.15, 0.2), w * rng.uniform(0.78, 0.84)):
        canvas.draw("ellipse", (cx - 1.2 * r, axle - 1.2 * r, cx + 1.2 * r, axle + 0.5 * r), (30, 30, 30))
        canvas.draw("ellipse", (cx - r, axle - r, cx + r, axle + r), (18, 18, 18))
        canvas.draw("ellipse", (cx - rim_r, axle - rim_r, cx + rim_r, axle + rim_r), rim)
        for a in np.linspace(0, np.pi, spokes, endpoint=False):
            dx, dy = rim_r * np.cos(a), rim_r * np.sin(a)
            canvas.draw("line", (cx - dx, axle - dy, cx + dx, axle + dy), (60, 60, 60), width=2)
    shade = np.linspace(1.2, 0.8, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    return canvas.sprite(f"car_{class_id}", shade)


def _car_view(
    rng: np.random.Generator, car: _Landmark, k: int, frame: tuple[int, int], generics: list[_Landmark], assets: _Assets
) -> Image.Image:
    """A car photographed in the street: either direction, turned up to 30 degrees, at varying size and light."""
    w, h = frame
    yaw, pitch, roll, scale = rng.uniform(-30, 30), rng.uniform(0, 8), rng.uniform(-3, 3), rng.uniform(0.75, 1.0)
    pose = _Pose(yaw, pitch, roll, scale, w * rng.uniform(0.42, 0.58), h * rng.uniform(0.5, 0.62), rng.uniform(2.2, 4))
    layer, alpha = _place(car, pose, frame, flip=bool(rng.random() < 0.5))
    rows = np.flatnonzero(alpha.max(axis=1) > 0.5)
    contact = float(rows.max()) if len(rows) else 0.7 * h
    horizon = float(np.clip(contact - h * rng.uniform(0.15, 0.35), 0.3 * h, 0.9 * h))
    scene = _background(rng, frame, horizon, generics, n_buildings=int(rng.integers(0, 2)))
    scene = _shadow(scene, alpha, 2, 4, 0.5)
    scene = _composite(scene, layer * rng.uniform(0.8, 1.05), alpha)
    return _finish(rng, scene, _look(rng, strong=bool(rng.random() < 0.15)))


# Garment kind -> outline, as (x, y) fractions of the sprite.
_GARMENTS: dict[str, tuple[tuple[float, float], ...]] = {
    "tee": ((0.32, 0.06), (0.68, 0.06), (0.92, 0.2), (0.84, 0.34), (0.74, 0.3), (0.74, 0.95), (0.26, 0.95),
            (0.26, 0.3), (0.16, 0.34), (0.08, 0.2)),
    "shirt": ((0.32, 0.06), (0.68, 0.06), (0.9, 0.2), (0.98, 0.7), (0.88, 0.72), (0.76, 0.32), (0.76, 0.95),
              (0.24, 0.95), (0.24, 0.32), (0.12, 0.72), (0.02, 0.7), (0.1, 0.2)),
    "tank": ((0.34, 0.04), (0.42, 0.04), (0.44, 0.14), (0.56, 0.14), (0.58, 0.04), (0.66, 0.04), (0.7, 0.3),
             (0.74, 0.95), (0.26, 0.95), (0.3, 0.3)),
    "dress": ((0.36, 0.04), (0.64, 0.04), (0.68, 0.3), (0.62, 0.4), (0.9, 0.96), (0.1, 0.96), (0.38, 0.4), (0.32, 0.3)),
    "skirt": ((0.3, 0.3), (0.7, 0.3), (0.92, 0.94), (0.08, 0.94)),
    "trousers": ((0.28, 0.04), (0.72, 0.04), (0.8, 0.96), (0.56, 0.96), (0.5, 0.3), (0.44, 0.96), (0.2, 0.96)),
}  # fmt: skip
_PATTERNS = ("solid", "hstripes", "checks", "print", "dots", "vstripes", "block")
_GARMENT_VIEWS = ("front", "side", "back", "full")  # In-shop view names of views 0..3; later views: "additional"


@dataclass(frozen=True)
class _Garment:
    kind: str
    front: _Landmark
    back: _Landmark  # no front print, buttons or pocket
    worn: _Landmark  # on a model: head, arms and legs around it


def _garment(rng: np.random.Generator, class_id: int, assets: _Assets) -> _Garment:
    """One garment: kind, colour, fabric pattern (stripes, checks, dots, a photo print or colour blocks), trim.

    Classes ``2m`` and ``2m + 1`` share kind, pattern and its second colour (their main colours are close too):
    look-alike products told apart by colour shade, print and fabric.
    """
    w, h = 200, 260
    pair = class_id // 2
    kind = list(_GARMENTS)[pair % len(_GARMENTS)]
    hue, sat, val = _class_colour(class_id)
    base = np.array(_hsv(hue, sat, val), np.float32)
    pair_hue = _class_colour(2 * pair)[0]
    second = np.array(_hsv(pair_hue + 0.5, 0.3 + 0.5 * (0.53 * pair % 1), 0.3 + 0.6 * (0.29 * pair % 1)), np.float32)
    pattern = _PATTERNS[pair % len(_PATTERNS)]
    period, duty = 10 + 16 * (0.43 * pair % 1), 0.25 + 0.35 * (0.61 * pair % 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes_h, stripes_v = (yy % period) < duty * period, (xx % period) < duty * period
    dots = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (duty * period / 2) ** 2
    second_mask = {
        "hstripes": stripes_h,
        "vstripes": stripes_v,
        "checks": stripes_h ^ stripes_v,
        "dots": dots,
        "block": yy > h * (0.45 + 0.25 * (0.77 * pair % 1)),
    }.get(pattern, np.zeros((h, w), bool))
    fabric = np.where(second_mask[..., None], second, base)
    tex = _material_crop(rng, assets.materials[int(rng.integers(len(assets.materials)))], w, h, rng.uniform(0.3, 0.8))
    folds = 0.85 + 0.3 * _smooth_noise(rng, w, h, 5)
    shading = folds * (1 + 0.08 * tex)
    tile = assets.tiles[int(rng.integers(len(assets.tiles)))]
    print_box = (int(w * 0.36), int(h * 0.22), int(w * 0.64), int(h * 0.42))
    art = _fit_crop(rng, tile, print_box[2] - print_box[0], print_box[3] - print_box[1], rng.uniform(0.6, 1.0))
    trim = _hsv(hue, sat * 0.5, val * 0.6)
    buttons = kind == "shirt" or (kind == "dress" and rng.random() < 0.5)
    skin = _hsv(rng.uniform(0.04, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.9))
    legs = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.15, 0.5))
    outline = [(x * w, y * h) for x, y in _GARMENTS[kind]]
    cloth_mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(cloth_mask).polygon(outline, fill=255)
    cloth = (np.asarray(cloth_mask) > 127)[..., None]

    def render(variant: str) -> _Landmark:
        canvas = _Canvas((w, h))
        if variant == "worn":
            if kind not in ("skirt", "trousers"):
                canvas.draw("ellipse", (w * 0.4, -h * 0.1, w * 0.6, h * 0.08), skin)
                canvas.draw("rectangle", (w * 0.2, h * 0.25, w * 0.8, h * 0.7), skin)
            if kind not in ("trousers", "dress"):
                canvas.draw("rectangle", (w * 0.3, h * 0.8, w * 0.7, h), legs if kind != "skirt" else skin)
        canvas.draw("polygon", outline, (0, 0, 0))
        rgb = np.asarray(canvas.rgb, np.float32)
        canvas.rgb.paste(
            Image.fromarray(np.where(cloth, fabric * shading[..., None], rgb).clip(0, 255).astype(np.uint8))
        )
        if pattern == "print" and variant != "back":
            canvas.rgb.paste(art, print_box[:2])
        if kind in ("tee", "shirt", "dress"):
            canvas.draw("arc", (w * 0.4, 0, w * 0.6, h * 0.12), trim, cover=False, start=0, end=180, width=4)
        if buttons and variant != "back":
            for y in np.linspace(h * 0.15, h * 0.6, 5):
                canvas.draw("ellipse", (w / 2 - 3, y - 3, w / 2 + 3, y + 3), trim, cover=False)
        canvas.draw("line", [*outline, outline[0]], trim, cover=False, width=2)
        return canvas.sprite(f"garment_{class_id}_{variant}")

    return _Garment(kind, render("front"), render("back"), render("worn"))


def _garment_view(
    rng: np.random.Generator,
    garment: _Garment,
    k: int,
    frame: tuple[int, int],
    generics: list[_Landmark],
    assets: _Assets,
) -> Image.Image:
    """View ``k`` of a garment on a studio backdrop: front, side (turned), back, full (worn), then close-ups."""
    w, h = frame
    view = _GARMENT_VIEWS[k] if k < len(_GARMENT_VIEWS) else "additional"
    sprite = {"back": garment.back, "full": garment.worn}.get(view, garment.front)
    yaw = rng.choice([-1, 1]) * rng.uniform(30, 45) if view == "side" else rng.uniform(-8, 8)
    scale, cx, cy = rng.uniform(0.75, 0.95), w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    if view == "additional":
        scale, cx, cy = rng.uniform(1.4, 2.0), w * rng.uniform(0.2, 0.8), h * rng.uniform(0.2, 0.8)
    pose = _Pose(yaw, rng.uniform(-3, 3), rng.uniform(-6, 6), scale, cx, cy, rng.uniform(2.5, 4.0))
    layer, alpha = _place(sprite, pose, frame, flip=bool(rng.random() < 0.3))
    scene = _shadow(_studio(rng, frame), alpha, rng.uniform(-4, 4), 4, 0.3)
    scene = _composite(scene, layer * rng.uniform(0.85, 1.05), alpha)
    return _finish(rng, scene, _look(rng, strong=bool(rng.random() < 0.25)))


def _uned_landmark(rng: np.random.Generator, class_id: int, assets: _Assets) -> _Landmark:
    """A landmark facade whose wall takes the class colour around a mural drawn from the bundled photos."""
    kind = _KINDS[str(rng.choice(list(_KINDS)))]
    style = replace(_sample_style(rng), wall=_hsv(*_class_colour(class_id)))
    tile = assets.tiles[int(rng.integers(len(assets.tiles)))]
    return _make_landmark(f"uned_landmark_{class_id}", _facade(rng, kind, style, tile, assets))


def _uned_landmark_view(
    rng: np.random.Generator, lm: _Landmark, k: int, frame: tuple[int, int], generics: list[_Landmark], assets: _Assets
) -> Image.Image:
    """View ``k`` of a landmark, in portrait one time in four: a clean query-like shot first, then alternately hard
    and easy views."""
    frame = frame[::-1] if rng.random() < 0.25 else frame
    target = "query" if k == 0 else ("hard" if k % 2 else "easy")
    return _landmark_shot(rng, lm, target, frame, generics, assets).image


@dataclass(frozen=True)
class _UnedDomain:
    """How a demo UnED domain is drawn: photo frame ``(w, h)``, the model of a class and the renderer of a view."""

    frame: tuple[int, int]
    model: Callable[[np.random.Generator, int, _Assets], Any]
    view: Callable[[np.random.Generator, Any, int, tuple[int, int], list[_Landmark], _Assets], Image.Image]


_UNED_RENDERERS = {
    "cars": _UnedDomain((160, 112), _car_model, _car_view),
    "inshop": _UnedDomain((112, 144), _garment, _garment_view),
    "gldv2": _UnedDomain((144, 112), _uned_landmark, _uned_landmark_view),
}
_U_CLASS, _U_VIEW, _U_IDS = range(3)


@dataclass(frozen=True)
class _UnedClass:
    """A class of a UnED demo domain: its id and, for each view, the split file that lists it."""

    class_id: int
    splits: tuple[str, ...]


def _uned_classes(config: DemoConfig, domain: str) -> list[_UnedClass]:
    """The domain's train, val, test (and index-only) classes, ids from 0, with the splits of their views.

    The test split follows the official kNN split (:data:`irlib.data.uned.KNN_SPLITS`): a domain whose query split
    is its index split lists every view of a test class in it; otherwise the first view is the query and the rest
    go to the index split, which also holds the index-only classes.
    """
    n = config.uned_views
    query_split, index_split = KNN_SPLITS["test"][domain]
    val_query, val_index = KNN_SPLITS["val"][domain]
    groups = [
        (config.uned_train_classes, ("train",) * n),
        (config.uned_val_classes, (val_query,) + (val_index,) * (n - 1)),
        (config.uned_test_classes, (query_split,) + (index_split,) * (n - 1)),
    ]
    if index_split != query_split:
        groups.append((config.uned_index_only_classes, (index_split,) * n))
    classes: list[_UnedClass] = []
    for count, splits in groups:
        classes += [_UnedClass(len(classes) + i, splits) for i in range(count)]
    return classes


def _uned_total(config: DemoConfig) -> int:
    return sum(len(c.splits) for d in config.uned_domains for c in _uned_classes(config, d))


def _uned_path(rng: np.random.Generator, domain: str, split: str, cls: _UnedClass, k: int, item: int) -> str:
    """Image path relative to ``images/``, in the style of the domain's source dataset (``datasets.md`` §6.2)."""
    if domain == "cars":
        return f"cars/car_ims/{item:06d}.jpg"
    if domain == "inshop":
        view = _GARMENT_VIEWS[k] if k < len(_GARMENT_VIEWS) else "additional"
        return f"inshop/img/id_{cls.class_id + 1:08d}/01_{k + 1}_{view}.jpg"
    image_id = rng.bytes(8).hex()
    folder = "train" if split in ("train", "val") else split
    return f"gldv2/images/{folder}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def _write_uned(
    root: Path, config: DemoConfig, generics: list[_Landmark], assets: _Assets, bar: tqdm
) -> dict[str, dict[str, int]]:
    """Write ``<root>/info_files/<domain>/<split>.json`` and ``<root>/images/``; return entries per domain and split.

    Class ``c`` of domain ``d`` is drawn from the stream ``(seed, _S_UNED, domain index, _U_CLASS, c)`` and its
    view ``k`` from ``(seed, _S_UNED, domain index, _U_VIEW, c, k)``.
    """
    counts: dict[str, dict[str, int]] = {}
    for domain in config.uned_domains:
        di = DOMAINS.index(domain)
        renderer = _UNED_RENDERERS[domain]
        ids = _rng(config.seed, _S_UNED, di, _U_IDS)
        entries: dict[str, list[dict[str, object]]] = {}
        item = 0
        for cls in _uned_classes(config, domain):
            model = renderer.model(_rng(config.seed, _S_UNED, di, _U_CLASS, cls.class_id), cls.class_id, assets)
            for k, split in enumerate(cls.splits):
                rng = _rng(config.seed, _S_UNED, di, _U_VIEW, cls.class_id, k)
                img = renderer.view(rng, model, k, renderer.frame, generics, assets)
                item += 1
                path = _uned_path(ids, domain, split, cls, k, item)
                (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
                _save(img, root / "images" / path, config)
                entries.setdefault(split, []).append({"path": path, "class_id": cls.class_id})
                bar.update()
        folder = root / "info_files" / domain
        folder.mkdir(parents=True)
        for split, rows in entries.items():
            (folder / f"{split}.json").write_text(json.dumps(rows))
        counts[domain] = {split: len(rows) for split, rows in sorted(entries.items())}
    return counts


# ----------------------------------------------------------------------------------------------- ILIAS


# Object kind -> (taxonomy path category/subcategory/subsubcategory, noun of its text query).
_OBJECTS: dict[str, tuple[tuple[str, str, str], str]] = {
    "box": (("product", "food", "other"), "cardboard box"),
    "can": (("product", "drink", "beer"), "drink can"),
    "bottle": (("product", "drink", "other"), "bottle"),
    "book": (("media", "book", "other"), "book"),
    "mug": (("household", "tableware", "cup"), "mug"),
    "pin": (("fashion", "accessory", "pin"), "round pin badge"),
    "earrings": (("fashion", "jewelry", "other"), "pair of drop earrings"),
}
_ADJECTIVES = (
    "bouncy",
    "breezy",
    "brisk",
    "cozy",
    "dandy",
    "frisky",
    "glowy",
    "jolly",
    "loopy",
    "perky",
    "plucky",
    "snuggy",
    "spry",
    "wavy",
    "zesty",
    "playful",
)
_SYLLABLES = (
    "bim",
    "blo",
    "bop",
    "dle",
    "dorf",
    "dri",
    "flu",
    "glo",
    "ket",
    "ling",
    "nib",
    "noo",
    "plin",
    "pop",
    "snoo",
    "tif",
    "toop",
    "zib",
)
# Positive scale (box area / image area) and clutter ranges, one per official group (ilias evaluation/src/dataset.py
# SCALE_GROUPS and CLUTTER_GROUPS, lines 8-14); the last upper bounds are the demo's own.
_SCALE_RANGES = ((0.02, 0.0688), (0.0688, 0.1352), (0.1353, 0.2729), (0.273, 0.5))
_CLUTTER_RANGES = ((2, 18), (18, 33), (33, 53), (53, 76))
_ILIAS_FRAME = (192, 144)
_I_PLAN, _I_INSTANCE, _I_COUNTS, _I_QUERY, _I_POS, _I_POOL, _I_KEYS, _I_DISTRACTOR = range(8)


@dataclass(frozen=True)
class _Instance:
    """An ILIAS object instance: folder name, number ``NNN``, kind, HSV colour and the sprite of one piece."""

    name: str
    number: int
    kind: str
    colour: tuple[float, float, float]
    piece: _Landmark

    @property
    def pieces(self) -> int:
        return 2 if self.kind == "earrings" else 1


def _object_piece(
    rng: np.random.Generator, kind: str, colour: tuple[float, float, float], photo: Image.Image
) -> _Landmark:
    """Sprite of one object (one earring of a pair) printed with a region of ``photo``."""
    hue, sat, val = colour
    main, light, dark = _hsv(hue, sat, val), _hsv(hue, sat * 0.6, min(1.0, val * 1.25)), _hsv(hue, sat, val * 0.6)
    contrast = _hsv(hue + 0.5, rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.95))
    metal = _hsv(0.12, rng.choice([0.0, 0.45]), 0.8)
    shading = None
    if kind == "box":
        fw, fh, dep = 120, 160, 22
        canvas = _Canvas((fw + dep, fh + dep))
        canvas.draw("polygon", [(0, dep), (dep, 0), (fw + dep, 0), (fw, dep)], light)
        canvas.draw("polygon", [(fw, dep), (fw + dep, 0), (fw + dep, fh), (fw, fh + dep)], dark)
        canvas.draw("rectangle", (0, dep, fw, fh + dep), main)
        canvas.draw("rectangle", (0, dep + 8, fw, dep + 26), contrast)
        canvas.rgb.paste(_fit_crop(rng, photo, fw - 20, fh - 60, rng.uniform(0.6, 1.0)), (10, dep + 34))
    elif kind == "can":
        w, h = 90, 160
        canvas = _Canvas((w, h))
        canvas.draw("rectangle", (0, 8, w, h - 8), main)
        canvas.rgb.paste(_fit_crop(rng, photo, w, h - 70, rng.uniform(0.6, 1.0)), (0, 30))
        canvas.draw("ellipse", (0, h - 16, w - 1, h - 1), metal)
        canvas.draw("ellipse", (0, 0, w - 1, 16), metal)
        shading = _cylinder(w, h)
    elif kind == "bottle":
        w, h = 80, 200
        canvas = _Canvas((w, h))
        canvas.draw("rectangle", (28, 0, 52, 18), contrast)
        canvas.draw("rectangle", (30, 16, 50, 62), main)
        canvas.draw("polygon", [(30, 60), (50, 60), (w - 1, 100), (0, 100)], main)
        canvas.draw("rounded_rectangle", (0, 96, w - 1, h - 1), main, radius=10)
        canvas.rgb.paste(_fit_crop(rng, photo, w, 56, rng.uniform(0.6, 1.0)), (0, 120))
        shading = _cylinder(w, h)
    elif kind == "book":
        w, h = 130, 175
        canvas = _Canvas((w, h))
        canvas.draw("rectangle", (0, 0, w - 1, h - 1), main)
        canvas.draw("rectangle", (0, 0, 12, h - 1), dark)
        canvas.rgb.paste(_fit_crop(rng, photo, 104, 90, rng.uniform(0.6, 1.0)), (18, 24))
        canvas.draw("rectangle", (18, 124, 122, 140), contrast)
        canvas.draw("rectangle", (18, 148, 90, 154), dark)
    elif kind == "mug":
        w, h = 150, 120
        canvas = _Canvas((w, h))
        canvas.draw("ellipse", (96, 22, 148, 96), main, width=12)
        canvas.draw("rounded_rectangle", (0, 0, 112, h - 1), main, radius=8)
        canvas.rgb.paste(_fit_crop(rng, photo, 88, 72, rng.uniform(0.6, 1.0)), (12, 22))
        canvas.draw("ellipse", (0, 0, 112, 10), light)
        shading = _cylinder(w, h, 0, 112)
    elif kind == "pin":
        w = h = 110
        canvas = _Canvas((w, h))
        canvas.draw("ellipse", (0, 0, w - 1, h - 1), main)
        canvas.rgb.paste(_fit_crop(rng, photo, 90, 90, rng.uniform(0.5, 0.9)), (10, 10), _shape_mask("round", 90, 90))
        canvas.draw("arc", (6, 6, w - 7, h - 7), light, start=200, end=260, width=3)
    else:  # one drop earring
        w, h = 60, 96
        canvas = _Canvas((w, h))
        canvas.draw("arc", (20, 0, 40, 20), metal, start=180, end=360, width=3)
        canvas.draw("rectangle", (28, 10, 32, 28), metal)
        canvas.draw("ellipse", (0, 26, w - 1, h - 1), main)
        canvas.rgb.paste(_fit_crop(rng, photo, 48, 48, rng.uniform(0.4, 0.8)), (6, 36), _shape_mask("round", 48, 48))
    return canvas.sprite(kind, shading)


def _ilias_plan(config: DemoConfig, assets: _Assets) -> tuple[list[_Instance], list[_Instance]]:
    """The instances (distinct prints, names ``adjective_noun_NNN``) and a pool of look-alike non-instances.

    Pool object ``j`` copies the kind and colour of instance ``j`` with another print (a hard negative); pool prints
    come from the photo regions no instance uses and the posters.
    """
    plan = _rng(config.seed, _S_ILIAS, _I_PLAN)
    numbers = sorted(int(n) for n in plan.choice(1000, config.ilias_instances, replace=False))
    tiles = [assets.tiles[i] for i in plan.permutation(len(assets.tiles))]
    spare = tiles[config.ilias_instances :] + list(assets.posters)
    kinds = [list(_OBJECTS)[i] for i in plan.permutation(len(_OBJECTS))]
    instances, pool = [], []
    for i, number in enumerate(numbers):
        rng = _rng(config.seed, _S_ILIAS, _I_INSTANCE, i)
        noun = "".join(str(s) for s in rng.choice(_SYLLABLES, int(rng.integers(2, 4))))
        name = f"{rng.choice(_ADJECTIVES)}_{noun}_{number:03d}"
        kind = kinds[i % len(kinds)]
        colour = (float(rng.random()), rng.uniform(0.4, 0.9), rng.uniform(0.45, 0.9))
        instances.append(_Instance(name, number, kind, colour, _object_piece(rng, kind, colour, tiles[i])))
        rng = _rng(config.seed, _S_ILIAS, _I_POOL, i)
        photo = spare[int(rng.integers(len(spare)))]
        pool.append(_Instance(f"pool_{i}", -1, kind, colour, _object_piece(rng, kind, colour, photo)))
    return instances, pool


def _ilias_counts(config: DemoConfig, i: int) -> tuple[int, int]:
    """``(image queries, positives)`` of instance ``i``: 1-2 and 2-6."""
    rng = _rng(config.seed, _S_ILIAS, _I_COUNTS, i)
    return int(rng.integers(1, 3)), int(rng.integers(2, 7))


def _ilias_total(config: DemoConfig) -> int:
    return sum(sum(_ilias_counts(config, i)) for i in range(config.ilias_instances)) + config.ilias_distractors


def _put_object(
    rng: np.random.Generator, scene: np.ndarray, obj: _Instance, area: float, turn: float, frame: tuple[int, int]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Place ``obj`` (both earrings of a pair side by side) covering about ``area`` of the frame, turned up to
    ``turn`` degrees, with a soft shadow; return the scene and the ``x y w h`` integer box of each piece."""
    w, h = frame
    scale = _fill_scale(obj.piece, frame, area / obj.pieces)
    pixels = scale * min(w / obj.piece.size[0], h / obj.piece.size[1])
    bw, bh = obj.piece.size[0] * pixels * (1.15 * obj.pieces - 0.15), obj.piece.size[1] * pixels
    cx = rng.uniform(min(bw / 2, w / 2), max(w - bw / 2, w / 2))
    cy = rng.uniform(min(bh / 2, h / 2), max(h - bh / 2, h / 2))
    yaw, pitch, roll, dist = rng.uniform(-turn, turn), rng.uniform(-turn, turn) / 3, rng.uniform(-turn, turn) / 2, 3.0
    boxes = []
    for p in range(obj.pieces):
        px = cx + (p - (obj.pieces - 1) / 2) * 1.15 * obj.piece.size[0] * pixels
        layer, alpha = _place(obj.piece, _Pose(yaw, pitch, roll, scale, px, cy, dist), frame)
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs):
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
        scene = _composite(_shadow(scene, alpha, 3, 4, 0.35), layer, alpha)
    return scene, boxes


def _ilias_query(rng: np.random.Generator, obj: _Instance) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """An image query: the object large and nearly frontal on a clean studio backdrop."""
    frame = _ILIAS_FRAME[::-1] if rng.random() < 0.4 else _ILIAS_FRAME
    scene, boxes = _put_object(rng, _studio(rng, frame), obj, rng.uniform(0.2, 0.4), 12, frame)
    return _finish(rng, scene, _look(rng, strong=False)), boxes


def _cluttered_scene(
    rng: np.random.Generator,
    frame: tuple[int, int],
    clutter: int,
    pool: list[_Instance],
    generics: list[_Landmark],
    assets: _Assets,
) -> np.ndarray:
    """An indoor table or a street, with ``clutter`` items: look-alike pool objects (one per 15) and small shapes."""
    h = frame[1]
    if rng.random() < 0.35:
        scene = _background(rng, frame, h * rng.uniform(0.4, 0.7), generics, n_buildings=int(rng.integers(0, 3)))
    else:
        scene = _indoor(rng, frame, assets)
    n_objects = min(3, clutter // 15)
    items, alpha = _clutter_items(rng, frame, clutter - n_objects)
    scene = _composite(scene, items, alpha)
    for _ in range(n_objects):
        other = pool[int(rng.integers(len(pool)))]
        scene, _ = _put_object(rng, scene, other, rng.uniform(0.03, 0.15), 40, frame)
    return scene


def _ilias_positive(
    rng: np.random.Generator, obj: _Instance, pool: list[_Instance], generics: list[_Landmark], assets: _Assets
) -> tuple[Image.Image, list[tuple[int, int, int, int]], float, int]:
    """A positive: the object in clutter, at a scale and a clutter level drawn across the official groups, turned,
    under varied light; returns ``(image, boxes, scale, clutter)`` with scale = box area / image area."""
    frame = _ILIAS_FRAME[::-1] if rng.random() < 0.3 else _ILIAS_FRAME
    lo, hi = _SCALE_RANGES[int(rng.integers(len(_SCALE_RANGES)))]
    c_lo, c_hi = _CLUTTER_RANGES[int(rng.integers(len(_CLUTTER_RANGES)))]
    clutter = int(rng.integers(c_lo, c_hi))
    scene = _cluttered_scene(rng, frame, clutter, pool, generics, assets)
    scene, boxes = _put_object(rng, scene, obj, rng.uniform(lo, hi), 35, frame)
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    scale = (x1 - x0) * (y1 - y0) / (frame[0] * frame[1])
    return _finish(rng, scene, _look(rng, strong=bool(rng.random() < 0.2))), boxes, scale, clutter


def _ilias_distractor(
    rng: np.random.Generator, pool: list[_Instance], generics: list[_Landmark], assets: _Assets
) -> Image.Image:
    """A distractor: a street of ordinary buildings, or clutter with look-alike objects but no instance."""
    frame = _ILIAS_FRAME[::-1] if rng.random() < 0.3 else _ILIAS_FRAME
    if rng.random() < 0.35:
        return _clutter_shot(rng, frame, generics)
    scene = _cluttered_scene(rng, frame, int(rng.integers(15, 70)), pool, generics, assets)
    return _finish(rng, scene, _look(rng, strong=bool(rng.random() < 0.2)))


def _colour_name(hsv: tuple[float, float, float]) -> str:
    hue, sat, val = hsv
    if val < 0.3:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.8 else "grey"
    names = (
        (0.04, "red"),
        (0.1, "orange"),
        (0.18, "yellow"),
        (0.45, "green"),
        (0.55, "teal"),
        (0.72, "blue"),
        (0.82, "purple"),
        (0.95, "pink"),
        (1.0, "red"),
    )
    return next(name for bound, name in names if hue % 1.0 < bound)


def _text_query(obj: _Instance) -> str:
    colour = _colour_name(obj.colour)
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {_OBJECTS[obj.kind][1]} with a printed photograph on it\n"


def _box_lines(boxes: list[tuple[int, int, int, int]]) -> str:
    return "".join(f"{x} {y} {w} {h}\n" for x, y, w, h in boxes)


def _write_ilias(
    root: Path, config: DemoConfig, generics: list[_Landmark], assets: _Assets, bar: tqdm
) -> dict[str, int]:
    """Write the ILIAS layout under ``root``; return counts.

    ``ilias_core/<name>/query/QNNN_yy.jpg`` (+ ``_bbox.txt``) and ``TNNN.txt``, ``pos/PNNN_zz.jpg`` (+ ``_bbox.txt``
    for about 4 in 5), ``image_ids/`` (``image_query_ids.txt`` rows ``id,x y w h`` of the union box,
    ``text_query_ids.txt``, ``positive_ids.txt`` rows ``id,scale,clutter``, ``distractor_ids.txt.gz`` of
    ``<shard>.tar/<key>`` ids (the shard's file name, as ilias ``generators.py`` forms them) and
    ``mini_ilias_yfcc100m_ids.txt``, a third of the distractors' keys), ``misc/taxonomy.json``
    and the distractors as ``yfcc100m/NNNNNN.tar`` shards of ``<8-digit key>.jpg`` members. The mini list holds bare
    keys, as the official code matches it against webdataset keys (ilias ``feature_extraction/src/datasets/
    generators.py`` ``in_shortlist``; ``knn_search/src/dataset.py`` ``filter``).
    """
    instances, pool = _ilias_plan(config, assets)
    core = root / "ilias_core"
    query_rows, text_ids, positive_rows = [], [], []
    taxonomy: dict[str, dict[str, dict[str, list[str]]]] = {}
    for i, obj in enumerate(instances):
        n_queries, n_positives = _ilias_counts(config, i)
        (core / obj.name / "query").mkdir(parents=True)
        (core / obj.name / "pos").mkdir()
        for q in range(n_queries):
            image, boxes = _ilias_query(_rng(config.seed, _S_ILIAS, _I_QUERY, i, q), obj)
            image_id = f"{obj.name}/query/Q{obj.number:03d}_{q:02d}.jpg"
            _save(image, core / image_id, config)
            (core / image_id).with_name(f"Q{obj.number:03d}_{q:02d}_bbox.txt").write_text(_box_lines(boxes))
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
            query_rows.append(f"{image_id},{x0} {y0} {x1 - x0} {y1 - y0}")
            bar.update()
        text_id = f"{obj.name}/query/T{obj.number:03d}.txt"
        (core / text_id).write_text(_text_query(obj))
        text_ids.append(text_id)
        for z in range(n_positives):
            rng = _rng(config.seed, _S_ILIAS, _I_POS, i, z)
            image, boxes, scale, clutter = _ilias_positive(rng, obj, pool, generics, assets)
            image_id = f"{obj.name}/pos/P{obj.number:03d}_{z:02d}.jpg"
            _save(image, core / image_id, config)
            if rng.random() < 0.8:
                (core / image_id).with_name(f"P{obj.number:03d}_{z:02d}_bbox.txt").write_text(_box_lines(boxes))
            positive_rows.append(f"{image_id},{scale},{clutter}")
            bar.update()
        category, sub, subsub = _OBJECTS[obj.kind][0]
        taxonomy.setdefault(category, {}).setdefault(sub, {}).setdefault(subsub, []).append(obj.name)

    ids = root / "image_ids"
    ids.mkdir()
    for name, rows in (
        ("image_query_ids.txt", query_rows),
        ("text_query_ids.txt", text_ids),
        ("positive_ids.txt", positive_rows),
    ):
        (ids / name).write_text("".join(f"{row}\n" for row in sorted(rows)))
    (root / "misc").mkdir()
    (root / "misc" / "taxonomy.json").write_text(json.dumps(taxonomy, indent=2) + "\n")

    key_rng = _rng(config.seed, _S_ILIAS, _I_KEYS)
    keys = sorted(int(k) for k in key_rng.choice(10**8, config.ilias_distractors, replace=False))
    shards = np.array_split(np.arange(config.ilias_distractors), config.ilias_shards)
    (root / "yfcc100m").mkdir()
    distractor_ids = []
    for s, members in enumerate(shards):
        with tarfile.open(root / "yfcc100m" / f"{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in members:
                image = _ilias_distractor(_rng(config.seed, _S_ILIAS, _I_DISTRACTOR, int(j)), pool, generics, assets)
                data = _jpeg_bytes(image, config)
                info = tarfile.TarInfo(f"{keys[j]:08d}.jpg")  # mtime, owner and mode keep their fixed defaults
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                distractor_ids.append(f"{s:06d}.tar/{keys[j]:08d}")  # official ids keep ".tar"
                bar.update()
    with gzip.GzipFile(ids / "distractor_ids.txt.gz", "wb", mtime=0) as f:
        f.write("".join(f"{i}\n" for i in distractor_ids).encode())
    mini = sorted(key_rng.choice(len(keys), max(1, len(keys) // 3), replace=False))
    (ids / "mini_ilias_yfcc100m_ids.txt").write_text("".join(f"{keys[j]:08d}\n" for j in mini))
    return {
        "instances": len(instances),
        "image_queries": len(query_rows),
        "text_queries": len(text_ids),
        "positives": len(positive_rows),
        "distractors": len(distractor_ids),
        "mini_distractors": len(mini),
        "shards": len(shards),
    }
