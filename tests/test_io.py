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
