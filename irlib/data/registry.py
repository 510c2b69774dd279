"""One registry of every dataset irlib reads: ``load_dataset("roxford5k", root)``, ``list_datasets()``.

Each name maps to the loader of its family module (``revisited``, ``gldv2``, ``uned``, ``ilias``, ``synthetic``), so
notebooks and the command line pick a dataset by name and the loaders stay the single place that parses formats.
``root`` is the folder :mod:`irlib.data.download` fills (``<root>/roxford5k/``, ``<root>/gldv2/``, ...), or for the
demo sets the folder the demo data is generated into. The GLDv2 and UnED entries also take their own folder as
``root`` (recognised by its ``train/`` or ``info_files/``), as a training config's ``data_dir`` names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from irlib.data.gldv2 import gldv2_retrieval, gldv2_train, rgldv2_clean
from irlib.data.ilias import DISTRACTOR_DIR, MINI_ILIAS_IDS, IliasDataset
from irlib.data.revisited import Distractors, RevisitedDataset
from irlib.data.synthetic import DEMO_DATASET, make_demo_data
from irlib.data.uned import uned_knn, uned_split
from irlib.registry import Registry

__all__ = ["DatasetEntry", "list_datasets", "load_dataset"]

Kind = Literal["test", "train", "distractors"]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its ``kind``, a one-line ``description`` and the ``loader(root, **kwargs)``."""

    name: str
    kind: Kind
    description: str
    loader: Callable[..., Any]


DATASETS: Registry[DatasetEntry] = Registry("dataset")
"""Dataset name -> :class:`DatasetEntry`."""


def _register(name: str, kind: Kind, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        DATASETS.register(name, DatasetEntry(name, kind, description, fn))
        return fn

    return decorator


def list_datasets(pattern: str | None = None, kind: Kind | None = None) -> list[str]:
    """Sorted registered names, filtered by an fnmatch ``pattern`` and/or ``kind``."""
    return [n for n in DATASETS.names(pattern) if kind is None or DATASETS[n].kind == kind]


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; unknown names raise ValueError listing the known ones."""
    return DATASETS.get(name)


def load_dataset(name: str, root: str | os.PathLike, /, **kwargs: Any) -> Any:
    """Load dataset ``name`` from ``root``; ``kwargs`` go to its family loader (see ``list_datasets()``)."""
    return dataset_entry(name).loader(Path(root), **kwargs)


def _family_dir(root: Path, family: str, marker: str) -> Path:
    """``<root>/<family>`` (the download layout), or ``root`` itself when it already is that folder (has ``marker``)."""
    return root if (root / marker).exists() else root / family


def _gldv2_dir(root: Path) -> Path:
    return _family_dir(root, "gldv2", "train")


def _uned_dir(root: Path) -> Path:
    return _family_dir(root, "uned", "info_files")


def _revisited(name: str) -> Callable[..., RevisitedDataset]:
    def load(root: Path, distractors: str | os.PathLike | None = None, **kwargs: Any) -> RevisitedDataset:
        dataset = RevisitedDataset.from_root(root, name)
        if distractors is None:
            return dataset
        return dataset.with_distractors(Distractors.from_list(distractors, **kwargs))

    return load


for _name, _title in (("roxford5k", "Revisited Oxford"), ("rparis6k", "Revisited Paris")):
    _register(
        _name,
        "test",
        f"{_title} (<root>/{_name}/gnd_{_name}.pkl + jpg/); distractors=<root>/revisitop1m appends the +1M set",
    )(_revisited(_name))


@_register("revisited", "test", "any revisited-format folder (root = the folder with gnd_<name>.pkl and jpg/)")
def _revisited_dir(root: Path, name: str | None = None) -> RevisitedDataset:
    return RevisitedDataset.from_dir(root, name)


@_register("revisitop1m", "distractors", "the 1M distractors (<root>/revisitop1m/revisitop1m.txt + jpg/)")
def _revisitop1m(root: Path, **kwargs: Any) -> Distractors:
    return Distractors.from_list(root / "revisitop1m", **kwargs)


@_register("demo", "test", "the embedded demo test set, generated under root on first use")
def _demo(root: Path) -> RevisitedDataset:
    return RevisitedDataset.from_dir(make_demo_data(root, progress=False) / DEMO_DATASET)


@_register("demo-train", "train", "the demo training split (GLDv2-clean layout), generated under root on first use")
def _demo_train(root: Path, **kwargs: Any) -> Any:
    return gldv2_train(make_demo_data(root, progress=False), **kwargs)


@_register("gldv2", "train", "GLDv2 train split (<root>/gldv2/train.csv + train/a/b/c/<id>.jpg)")
def _gldv2(root: Path, **kwargs: Any) -> Any:
    return gldv2_train(_gldv2_dir(root), clean=False, **kwargs)


@_register("gldv2-clean", "train", "GLDv2-clean (<root>/gldv2/train_clean.csv)")
def _gldv2_clean(root: Path, **kwargs: Any) -> Any:
    return gldv2_train(_gldv2_dir(root), **kwargs)


@_register("rgldv2-clean", "train", "GLDv2-clean minus a file of landmark ids or an image-id table (exclude_file=...)")
def _rgldv2_clean(root: Path, exclude_file: str | os.PathLike, **kwargs: Any) -> Any:
    return rgldv2_clean(_gldv2_dir(root), exclude_file, **kwargs)


@_register("gldv2-retrieval", "test", "GLDv2 retrieval: index/test ids and retrieval_solution_v2.1.csv (<root>/gldv2)")
def _gldv2_retrieval(root: Path, **kwargs: Any) -> Any:
    return gldv2_retrieval(_gldv2_dir(root), **kwargs)


@_register("uned", "train", "UnED (<root>/uned/info_files/<domain>/<split>.json + images/); split=, domains=")
def _uned(root: Path, **kwargs: Any) -> Any:
    return uned_split(_uned_dir(root), **kwargs)


@_register("uned-knn", "test", "UnED merged kNN benchmark (<root>/uned/info_files/<domain>/<query|index>.json); split=")
def _uned_knn(root: Path, **kwargs: Any) -> Any:
    return uned_knn(_uned_dir(root), **kwargs)


@_register(
    "ilias",
    "test",
    "ILIAS core (<root>/ilias/ilias_core/<instance>/query|pos/); distractor_ids= (an id list), "
    "distractor_shards= (the .tar shards, a folder relative to <root>/ilias, e.g. 'yfcc100m')",
)
def _ilias(root: Path, distractor_shards: str | os.PathLike | None = None, **kwargs: Any) -> IliasDataset:
    shards = None if distractor_shards is None else root / "ilias" / distractor_shards
    return IliasDataset.from_dir(root / "ilias", distractor_shards=shards, **kwargs)


@_register(
    "mini-ilias",
    "test",
    f"ILIAS core + the distractors of <root>/ilias/image_ids/{MINI_ILIAS_IDS}, read from the shards "
    f"<root>/ilias/{DISTRACTOR_DIR}/*.tar; shards= (folder), ids= (list)",
)
def _mini_ilias(
    root: Path, shards: str | os.PathLike = DISTRACTOR_DIR, ids: str | os.PathLike | None = None, **kwargs: Any
) -> IliasDataset:
    ilias = root / "ilias"
    listed = ilias / "image_ids" / MINI_ILIAS_IDS if ids is None else Path(ids)
    return IliasDataset.from_dir(ilias, distractor_ids=listed, distractor_shards=ilias / shards, **kwargs)
