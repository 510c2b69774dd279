"""Atomic file writes: a reader never sees a half-written file, and a crash keeps the previous version."""

from __future__ import annotations

import _compat_pickle
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds. The file gets
    the permissions of a plain ``open`` under the user's umask (``mkstemp``'s are 0600), so a shared results folder
    stays readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO[Any]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    _atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as YAML (keys in their order), atomically."""
    import yaml

    _atomic_write(path, "w", lambda f: f.write(yaml.safe_dump(obj, sort_keys=False)))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array in ``.npy`` format, atomically."""
    _atomic_write(path, "wb", lambda f: np.save(f, array, allow_pickle=False))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


SAFE_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }
)
"""What a data pickle may reconstruct besides plain containers, strings and numbers: NumPy arrays and scalars (and
``_codecs.encode``, which protocol-2 pickles use to rebuild their bytes)."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol-0/1/2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to load the Python object {module}.{name}")
        return super().find_class(module, name)


def load_data_pickle(path: str | os.PathLike, what: str = "data", fix: str = "replace it") -> Any:
    """Unpickle a *data* file without running code: only dicts, lists, tuples, strings, numbers, NumPy arrays and
    scalars (:data:`SAFE_PICKLE_GLOBALS`) are rebuilt. A file that asks for anything else (a crafted pickle runs
    code through such objects), an empty, truncated or non-pickle file raises ValueError naming the file, ``what``
    it should be and ``fix``, what to do."""
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f).load()
    except pickle.UnpicklingError as err:
        if "asks to load" in str(err):
            raise ValueError(
                f"{path}: refused: {err}, which {what} never holds (a pickle can run code); {fix}"
            ) from None
        reason = "truncated" if "truncated" in str(err) else "not a pickle, or damaged"
        raise ValueError(f"{path} is not a readable {what} ({reason}: {err}); {fix}") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError, MemoryError) as err:
        raise ValueError(
            f"{path} is not a readable {what} (empty or truncated: {type(err).__name__}: {err}); {fix}"
        ) from None
