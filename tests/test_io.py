"""Atomic writes: a failure while writing leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irlib.io import atomic_path, save_npy, sha256_file, write_json


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"map": 1.0})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half writ")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"map": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_npy_round_trip_and_checksum(tmp_path):
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    save_npy(tmp_path / "sub" / "a.npy", a)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "a.npy"), a)
    (tmp_path / "x.bin").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_files_get_the_users_umask_not_0600(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "group.json", {})
        os.umask(0o022)
        save_npy(tmp_path / "world.npy", np.zeros(2))
    finally:
        os.umask(old)
    assert (tmp_path / "group.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "world.npy").stat().st_mode & 0o777 == 0o644


class _Exploit:
    """A pickle payload: unpickling calls ``pathlib.Path.touch`` on a file (a stand-in for ``os.system``)."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_data_pickles_rebuild_only_data_and_never_run_code(tmp_path):
    import pickle

    from irlib.io import load_data_pickle

    data = {"gnd": [{"easy": [1], "bbx": (0.0, 1.0)}], "arr": np.arange(3), "n": np.int64(4), "s": {1, 2}}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=2))
    loaded = load_data_pickle(tmp_path / "ok.pkl")
    np.testing.assert_array_equal(loaded["arr"], data["arr"])
    assert loaded["gnd"] == data["gnd"] and loaded["n"] == 4 and loaded["s"] == {1, 2}

    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"gnd": _Exploit(marker)}))
    with pytest.raises(ValueError, match=r"evil.pkl: refused: it asks to load the Python object pathlib.*never holds"):
        load_data_pickle(tmp_path / "evil.pkl", "revisited ground truth")
    assert not marker.exists()  # the payload never ran

    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(data)[:40])
    (tmp_path / "text.pkl").write_text("imlist: [a, b]\n")
    for name in ("empty.pkl", "cut.pkl", "text.pkl"):
        with pytest.raises(ValueError, match=rf"{name} is not a readable revisited ground truth"):
            load_data_pickle(tmp_path / name, "revisited ground truth")
