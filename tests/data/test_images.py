"""Images read from files and from members of tar shards (random access), with EXIF orientation on request."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader, Dataset

from irlib.data.images import ImageLoadError, TarMember, as_image_ref, load_image


def jpeg_bytes(img: np.ndarray, orientation: int | None = None) -> bytes:
    """An ``(H, W, 3)`` uint8 image as JPEG bytes, with an EXIF orientation tag when given."""
    pil = Image.fromarray(img)
    buf = io.BytesIO()
    if orientation is None:
        pil.save(buf, "JPEG", quality=90)
    else:
        exif = pil.getexif()
        exif[0x0112] = orientation
        pil.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> dict[str, TarMember]:
    """An uncompressed tar of ``members`` (name -> bytes) in order, as webdataset shards are; name -> member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(path) as tar:
        return {i.name: TarMember(path, i.name, i.offset_data, i.size) for i in tar if i.isreg()}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()[::4, ::3]  # 128 x 171, not square


def test_a_member_decodes_to_the_pixels_of_the_same_bytes_in_a_file(tmp_path, photo):
    payload = jpeg_bytes(photo)
    members = write_shard(tmp_path / "000000.tar", {"00000000.json": b"{}", "00000001.jpg": payload})
    member = members["00000001.jpg"]
    assert member.read() == payload
    (tmp_path / "same.jpg").write_bytes(payload)
    from_file = np.asarray(load_image(tmp_path / "same.jpg"))
    from_tar = np.asarray(load_image(member))
    assert from_tar.shape == (128, 171, 3)
    np.testing.assert_array_equal(from_tar, from_file)
    assert pickle.loads(pickle.dumps(member)) == member
    assert as_image_ref(member) is member and as_image_ref(str(tmp_path / "a.jpg")) == tmp_path / "a.jpg"
    assert str(member) == f"{tmp_path / '000000.tar'}::00000001.jpg"


def test_exif_orientation_is_applied_only_on_request(tmp_path, photo):
    payload = jpeg_bytes(photo, orientation=6)  # stored landscape, to be shown rotated by 90 degrees
    member = write_shard(tmp_path / "s.tar", {"k.jpg": payload})["k.jpg"]
    (tmp_path / "k.jpg").write_bytes(payload)
    for ref in (tmp_path / "k.jpg", member):
        raw = load_image(ref)
        upright = load_image(ref, exif_transpose=True)
        assert raw.size == (171, 128) and upright.size == (128, 171)
        np.testing.assert_array_equal(np.asarray(upright), np.rot90(np.asarray(raw), k=-1))


class _Members(Dataset):
    def __init__(self, members: list[TarMember]) -> None:
        self.members = members

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(load_image(self.members[i])).copy())


def test_members_are_read_in_dataloader_worker_processes(tmp_path, photo):
    payloads = {f"{i:08d}.png": _png(np.roll(photo, i, axis=1)) for i in range(3)}
    members = list(write_shard(tmp_path / "000000.tar", payloads).values())
    got = list(DataLoader(_Members(members), batch_size=None, num_workers=1))
    for i, x in enumerate(got):
        np.testing.assert_array_equal(x.numpy(), np.roll(photo, i, axis=1))  # lossless


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_errors_name_the_shard_and_the_member(tmp_path, photo):
    shard = tmp_path / "000007.tar"
    members = write_shard(shard, {"good.jpg": jpeg_bytes(photo), "bad.jpg": b"not an image at all"})
    with pytest.raises(
        ImageLoadError, match=r"member 'bad.jpg' of tar shard .*000007.tar of dataset 'ilias' is corrupt"
    ):
        load_image(members["bad.jpg"], dataset="ilias")
    good = members["good.jpg"]
    with pytest.raises(ImageLoadError, match=r"tar shard .*000007.tar is truncated: member 'good.jpg'"):
        load_image(TarMember(shard, good.name, good.offset, shard.stat().st_size))
    with pytest.raises(ImageLoadError, match=r"member 'good.jpg' of tar shard .*nowhere.tar cannot be read"):
        load_image(TarMember(tmp_path / "nowhere.tar", good.name, good.offset, good.size))
    with pytest.raises(ImageLoadError, match=r"image .*missing.jpg of dataset 'x' does not exist"):
        load_image(tmp_path / "missing.jpg", dataset="x")
