"""Dataset downloads: resumable, checksum-verified, and never a partial or wrong file under its final name.

``python -m irlib download roxford5k --root data`` (or :func:`download`) fetches every file of a dataset into the
layout the loaders of :mod:`irlib.data` read. One file (:func:`fetch`) is written to ``<dest>.part`` and renamed to
``<dest>`` only after its size and checksum check out. An interrupted transfer resumes from the ``.part`` with an
HTTP ``Range`` request guarded by ``If-Range``: the server's ETag (or Last-Modified) of the first response is kept
in ``<dest>.part.json``, so a file that changed on the server since is sent whole and the download starts again
from zero instead of joining two versions (so does a server that ignores ``Range``). A ``.part`` without a known
validator is resumed only when a checksum will verify the result; otherwise it is downloaded again from zero.
Network errors (TLS errors included), timeouts and HTTP 5xx/408/429 answers are retried with exponential backoff;
other HTTP errors (404, ...) and certificates that do not verify stop at once. A checksum mismatch deletes the
``.part`` and downloads the file again; if the last attempt still mismatches, :class:`ChecksumError` names the URL,
the file and both digests. When the retries run out on network errors the ``.part`` is kept, so the next run
resumes.

What each file is checked against:

- ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``: a SHA-256 recorded here (see :data:`GND_SHA256`).
- Google Landmarks v2 tarballs: the MD5 that Google publishes for each of them (``md5sum/<split>/md5.<tar>.txt``).
- ILIAS ``ilias_core.tar``: the SHA-256 of the official ``checksums.txt`` (``<sha256> <url>`` lines, as the official
  ``download_ilias.sh`` reads it).
- Everything else (Oxford/Paris image tarballs, revisitop1m list and tarballs, GLDv2 CSVs, UnED ``info_files.zip``,
  ILIAS id lists) has no published checksum. These are trusted on first use (the manifest says so in each file's
  ``checked``): the first
  download is checked only against the length the server announces, and its SHA-256 is then recorded in
  ``<root>/.irlib-downloads.json``; a later download of the same file (after it was deleted, or from a mirror) must
  match the recorded digest. This catches a changed or corrupted file on a later download, not a file that was
  already wrong the first time; resuming such a file needs the server's validator (see above).

Archives (``.tgz``, ``.tar``, ``.tar.gz``, ``.zip``) are unpacked into a temporary folder inside their target folder
and then moved into place; members with absolute paths, ``..`` or anything other than regular files and folders
are refused. The manifest records an unpacked archive, which is then deleted (unless ``keep_archive``), so a rerun
skips it. The manifest assumes one downloading process per root at a time.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from tqdm.auto import tqdm

from irlib.io import write_json

__all__ = [
    "DATASETS",
    "GND_SHA256",
    "MANIFEST",
    "ArchiveError",
    "ChecksumError",
    "DownloadError",
    "Fetched",
    "Resource",
    "describe",
    "download",
    "extract_archive",
    "fetch",
    "list_downloads",
]

MANIFEST = ".irlib-downloads.json"
"""File name, under the download root, of the record of downloaded files and unpacked archives."""

_CHUNK = 1 << 20
_USER_AGENT = "irlib-download/1"
_RETRY_STATUS = {408, 429}
# Network failures worth another attempt. ConnectionError covers resets and aborts, HTTPException covers
# IncompleteRead and RemoteDisconnected, ssl.SSLError a TLS record broken mid-transfer. A certificate that does not
# verify is not transient (see _retrying); other OSErrors (a full disk, ...) are not network errors.
_TRANSIENT = (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError, ssl.SSLError)
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error)

T = TypeVar("T")


class DownloadError(RuntimeError):
    """A file could not be downloaded (HTTP error, or the retries ran out)."""


class ChecksumError(ValueError):
    """A downloaded or existing file does not have the expected size or digest."""


class ArchiveError(ValueError):
    """An archive is corrupt or has a member that would land outside its folder."""


@dataclass(frozen=True)
class Resource:
    """One file of a dataset.

    Attributes:
        url: where to download it from.
        dest: its path relative to the download root (for an archive: where the archive is stored while unpacked).
        sha256: the expected SHA-256, when known.
        size: the expected size in bytes, when known.
        md5_url: a GLDv2-style MD5 list (``<md5>  <file name>`` lines) to verify the file against.
        sha256_url: a published SHA-256 list (``<sha256> <file URL or name>`` lines, ILIAS's ``checksums.txt``) to
            verify the file against.
        extract: unpack the archive (tar, tar.gz/tgz or zip) after downloading it.
        extract_to: the folder, relative to the root, to unpack into.
        flatten: move every regular file of the archive straight into ``extract_to``, without its folders.
        keep_archive: keep the archive after unpacking it.
    """

    url: str
    dest: str
    sha256: str | None = None
    size: int | None = None
    md5_url: str | None = None
    sha256_url: str | None = None
    extract: bool = False
    extract_to: str = ""
    flatten: bool = False
    keep_archive: bool = False


@dataclass(frozen=True)
class Fetched:
    """The result of :func:`fetch`: the file, its SHA-256 and whether it was already there (no download)."""

    path: Path
    sha256: str
    reused: bool


# The revisited ground truth: SHA-256 and size of the team's reference copies in ../shared/data/revisitop, whose
# MD5s equal the known ones of the revisitop files (f2b67579f625a587b5b0828dbf2e8eb0, 2feae0a8257a5c6ca1b31b8eb73c8571).
GND_SHA256 = {
    "roxford5k": ("ba7967754bd2d7d2210a5799f9c45ad5835e269a80ef9d3eba44caa35816c471", 149_871),
    "rparis6k": ("d2e729a5293dda7dda8a15c8383424a42e4964a2c4cfea2f32fa85d11d2df499", 276_508),
}
"""``{dataset: (sha256, size)}`` of ``gnd_<dataset>.pkl``."""

_REVISITOP = "https://cmp.felk.cvut.cz/revisitop/data/datasets"  # the host serves UnED over https too
_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"  # revisitop publishes this host over http only
_GLD = "https://s3.amazonaws.com/google-landmark"
_ILIAS = "https://vrg.fel.cvut.cz/ilias_data"  # ilias-vrg/ilias download/download_ilias.sh
_ILIAS_IDS = ("image_query_ids.txt", "text_query_ids.txt", "positive_ids.txt")


def _gnd(name: str) -> Resource:
    sha256, size = GND_SHA256[name]
    return Resource(f"{_REVISITOP}/{name}/gnd_{name}.pkl", f"{name}/gnd_{name}.pkl", sha256=sha256, size=size)


def _archive(url: str, folder: str, *, flatten: bool = False) -> Resource:
    """An archive downloaded into ``folder`` and unpacked there."""
    return Resource(url, f"{folder}/{url.rsplit('/', 1)[1]}", extract=True, extract_to=folder, flatten=flatten)


def _gldv2_tars(split: str, count: int) -> tuple[Resource, ...]:
    return tuple(
        replace(
            _archive(f"{_GLD}/{split}/images_{i:03d}.tar", f"gldv2/{split}"),
            md5_url=f"{_GLD}/md5sum/{split}/md5.images_{i:03d}.txt",
        )
        for i in range(count)
    )


DATASETS: dict[str, tuple[Resource, ...]] = {
    "roxford5k": (
        _archive(f"{_VGG}/oxbuildings/oxbuild_images-v1.tgz", "roxford5k/jpg", flatten=True),
        _gnd("roxford5k"),
    ),
    "rparis6k": (
        _archive(f"{_VGG}/parisbuildings/paris_1-v1.tgz", "rparis6k/jpg", flatten=True),
        _archive(f"{_VGG}/parisbuildings/paris_2-v1.tgz", "rparis6k/jpg", flatten=True),
        _gnd("rparis6k"),
    ),
    "revisitop1m": (
        Resource(f"{_R1M}/revisitop1m.txt", "revisitop1m/revisitop1m.txt"),
        *(_archive(f"{_R1M}/jpg/revisitop1m.{i}.tar.gz", "revisitop1m/jpg") for i in range(1, 101)),
    ),
    "gldv2-clean": (
        Resource(f"{_GLD}/metadata/train_clean.csv", "gldv2/train_clean.csv"),
        Resource(f"{_GLD}/metadata/train.csv", "gldv2/train.csv"),
        *_gldv2_tars("train", 500),
    ),
    "gldv2-retrieval": (
        Resource(f"{_GLD}/metadata/index.csv", "gldv2/index.csv"),
        Resource(f"{_GLD}/metadata/test.csv", "gldv2/test.csv"),
        Resource(f"{_GLD}/ground_truth/retrieval_solution_v2.1.csv", "gldv2/retrieval_solution_v2.1.csv"),
        *_gldv2_tars("index", 100),
        *_gldv2_tars("test", 20),
    ),
    "uned-info": (_archive("https://cmp.felk.cvut.cz/univ_emb/info_files.zip", "uned"),),
    "ilias": (
        replace(_archive(f"{_ILIAS}/ilias_core.tar", "ilias"), sha256_url=f"{_ILIAS}/checksums.txt"),
        *(Resource(f"{_ILIAS}/image_ids/{name}", f"ilias/image_ids/{name}") for name in _ILIAS_IDS),
    ),
}
"""The downloadable datasets: name -> its files (destinations relative to the download root)."""

_ABOUT = {
    "roxford5k": "Revisited Oxford: the Oxford 5k images (jpg/) and gnd_roxford5k.pkl",
    "rparis6k": "Revisited Paris: the Paris 6k images (jpg/) and gnd_rparis6k.pkl",
    "revisitop1m": "the R1M distractors: revisitop1m.txt and 100 tarballs into jpg/",
    "gldv2-clean": "GLDv2 train split (500 tarballs of about 1 GB, MD5-checked) with train_clean.csv and train.csv",
    "gldv2-retrieval": "GLDv2 index (100 tarballs) and test (20) splits, index.csv, test.csv, retrieval solution",
    "uned-info": "UnED info_files (split lists); the images come from each domain's own source",
    "ilias": "ILIAS core (ilias_core.tar into ilias_core/) and the image_ids/ lists; not the 100M YFCC100M distractors",
}


def list_downloads() -> list[str]:
    """The names :func:`download` accepts."""
    return sorted(DATASETS)


def describe(name: str) -> str:
    """One line about a dataset: what it is, how many files, where they go."""
    resources = _resources(name)
    files = f"{len(resources)} file{'s' if len(resources) > 1 else ''}"
    return f"{name}: {_ABOUT[name]} ({files} into <root>/{_folder(resources)}/)"


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    force: bool = False,
) -> Fetched:
    """Download ``url`` to ``dest`` through ``<dest>.part``, resuming it, then check it and move it into place.

    An existing ``dest`` that has the expected size and digests is kept without any request. One that does not
    raises :class:`ChecksumError`, unless ``force``, which downloads it again. ``retries`` is the number of
    attempts after the first one (a checksum mismatch uses one); attempt ``i`` waits ``backoff * 2**i`` seconds
    (at most a minute) before the next.
    """
    dest = Path(dest)
    if dest.exists():
        hashes = _Hashes(md5=md5 is not None)
        hashes.update_file(dest)
        problem = _mismatch(dest.stat().st_size, hashes, sha256=sha256, md5=md5, size=size)
        if problem is None:
            return Fetched(dest, hashes.sha256.hexdigest(), reused=True)
        if not force:
            raise ChecksumError(f"{dest} exists but its {problem}; delete it (or use force) to download it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(dest.with_name(dest.name + ".part"))
    verified = sha256 is not None or md5 is not None

    def attempt() -> str:
        hashes = _transfer(
            url, part, md5=md5 is not None, verified=verified, timeout=timeout, progress=progress, label=dest.name
        )
        problem = _mismatch(part.path.stat().st_size, hashes, sha256=sha256, md5=md5, size=size)
        if problem is not None:
            part.discard()
            raise ChecksumError(f"{url}: the download of {dest} is wrong: its {problem}")
        os.replace(part.path, dest)
        part.validator_file.unlink(missing_ok=True)
        return hashes.sha256.hexdigest()

    return Fetched(dest, _retrying(url, attempt, retries=retries, backoff=backoff, part=part.path), reused=False)


def download(
    name: str,
    root: str | os.PathLike,
    *,
    mirror: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Download (and unpack) every file of dataset ``name`` into ``root``; returns the dataset's folder.

    Files that are already there and verify are skipped, and so are archives the manifest records as unpacked
    while their folder exists, so a rerun finishes an interrupted download. ``mirror`` is a base URL that replaces
    the scheme and host of every URL (the path is kept), e.g. an institutional mirror. ``log`` receives one line
    per file (``None``: silent). The other arguments are those of :func:`fetch`.
    """
    resources = _resources(name)
    root = Path(root)
    say = log or (lambda _: None)
    manifest = _Manifest(root / MANIFEST)
    told_tofu = False
    for res in resources:
        url, dest = _mirrored(res.url, mirror), root / res.dest
        if res.extract and res.dest in manifest.extracted and (root / res.extract_to).is_dir():
            say(f"{res.dest}: already unpacked into {res.extract_to}/")
            continue
        recorded = manifest.files.get(res.dest, {}).get("sha256")
        sha256, md5 = res.sha256 or recorded, None
        if res.sha256_url and not res.sha256:
            published = _published_digest(
                _mirrored(res.sha256_url, mirror), url, 64, retries=retries, backoff=backoff, timeout=timeout
            )
            if recorded is not None and recorded != published:
                say(f"{res.dest}: the published sha256 replaces the one recorded on first use")
            sha256 = published
        if res.md5_url and not sha256:
            md5 = _published_digest(
                _mirrored(res.md5_url, mirror), url, 32, retries=retries, backoff=backoff, timeout=timeout
            )
        if not dest.exists():
            say(f"{url} -> {dest}")
        try:
            got = fetch(
                url,
                dest,
                sha256=sha256,
                md5=md5,
                size=res.size,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
                force=force,
            )
        except ChecksumError as err:
            if recorded is None or res.sha256:
                raise
            raise ChecksumError(
                f"{err}. The expected sha256 was recorded when the file was first downloaded (no checksum is "
                f"published); if the file legitimately changed, remove its entry from {manifest.path}"
            ) from None
        if got.reused:
            say(f"{res.dest}: already there, verified")
        if got.sha256 != recorded:
            published_sha = res.sha256 or (sha256 if res.sha256_url else None)
            checked = "published sha256" if published_sha else f"published md5 {md5}" if md5 else "trust on first use"
            if checked == "trust on first use" and not told_tofu:
                say(
                    f"note: no checksum is published for some files of {name}; their sha256 is recorded in "
                    f"{manifest.path} on first download and later downloads must match it"
                )
                told_tofu = True
            manifest.record_file(
                res.dest, url=res.url, size=got.path.stat().st_size, sha256=got.sha256, checked=checked
            )
        if res.extract:
            count = extract_archive(dest, root / res.extract_to, flatten=res.flatten)
            manifest.record_extracted(res.dest, into=res.extract_to, files=count)
            if not res.keep_archive:
                dest.unlink()
            say(f"{res.dest}: unpacked {count} files into {res.extract_to}/")
    folder = root / _folder(resources)
    if name == "revisitop1m":
        say(_count_listed(folder / "revisitop1m.txt", folder / "jpg"))
    return folder


def extract_archive(archive: str | os.PathLike, into: str | os.PathLike, *, flatten: bool = False) -> int:
    """Unpack a tar (plain, gzip, bz2, xz) or zip archive into ``into``; returns the number of files.

    The members go to a temporary folder inside ``into`` and are then moved into place, replacing files of the
    same name. ``flatten`` drops the archive's folders (every file lands in ``into``; two files of the same name
    are an error). Absolute paths, ``..`` and members that are neither regular files nor folders are refused.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".irlib-extract-", dir=into))
    try:
        try:
            if archive.suffix.lower() == ".zip":
                with zipfile.ZipFile(archive) as zf:
                    _check_members(archive, ((i.filename, not i.is_dir(), i.is_dir()) for i in zf.infolist()))
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    members = tf.getmembers()
                    _check_members(archive, ((m.name, m.isfile(), m.isdir()) for m in members))
                    if hasattr(tarfile, "data_filter"):  # Python 3.12, 3.11.4, 3.10.12 and later
                        tf.extractall(tmp, members, filter="data")
                    else:
                        tf.extractall(tmp, members)
        except _ARCHIVE_ERRORS as err:
            raise ArchiveError(f"{archive} is not a readable archive ({type(err).__name__}: {err})") from err
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())
        targets = [into / (p.name if flatten else p.relative_to(tmp)) for p in files]
        if len(set(targets)) < len(targets):
            raise ArchiveError(f"{archive}: two members have the same file name, flattening would lose one")
        for src, dst in zip(files, targets, strict=True):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        return len(files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_members(archive: Path, members: Iterable[tuple[str, bool, bool]]) -> None:
    """Refuse ``(name, is_file, is_dir)`` members that are absolute, contain ``..`` or are links/devices."""
    for name, is_file, is_dir in members:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not (is_file or is_dir):
            raise ArchiveError(f"{archive}: refusing member {name!r} (absolute path, '..', link or special file)")


def _resources(name: str) -> tuple[Resource, ...]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_downloads())}")
    return DATASETS[name]


def _folder(resources: tuple[Resource, ...]) -> str:
    """The first path component shared by a dataset's files (``roxford5k``, ``gldv2``, ...)."""
    return PurePosixPath(resources[0].extract_to or resources[0].dest).parts[0]


def _mirrored(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (which may carry a path prefix)."""
    if mirror is None:
        return url
    parts = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


class _Hashes:
    """SHA-256 (always) and MD5 (on request) of a byte stream, updated block by block."""

    def __init__(self, *, md5: bool) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def update(self, block: bytes) -> None:
        self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)

    def update_file(self, path: Path) -> None:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                self.update(block)


def _mismatch(
    actual_size: int, hashes: _Hashes, *, sha256: str | None, md5: str | None, size: int | None
) -> str | None:
    """What is wrong with a file of ``actual_size`` and ``hashes`` (``None``: nothing)."""
    if size is not None and actual_size != size:
        return f"size is {actual_size} bytes, expected {size}"
    if sha256 is not None and hashes.sha256.hexdigest() != sha256.lower():
        return f"sha256 is {hashes.sha256.hexdigest()}, expected {sha256.lower()}"
    if md5 is not None and hashes.md5 is not None and hashes.md5.hexdigest() != md5.lower():
        return f"md5 is {hashes.md5.hexdigest()}, expected {md5.lower()}"
    return None


_VALIDATORS = ("etag", "last_modified")


class _Part:
    """A partial download ``<dest>.part`` and ``<dest>.part.json``, the server's validator of the bytes it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.validator_file = path.with_name(path.name + ".json")

    def validator(self) -> dict[str, str]:
        """The recorded ``etag`` / ``last_modified`` (empty when none was recorded or the file is unreadable)."""
        try:
            data = json.loads(self.validator_file.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if k in _VALIDATORS and isinstance(v, str)}

    def record(self, validator: dict[str, str]) -> None:
        if validator:
            write_json(self.validator_file, validator)
        else:
            self.validator_file.unlink(missing_ok=True)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.validator_file.unlink(missing_ok=True)


def _validator(headers: Any) -> dict[str, str]:
    """The validators of a response usable in ``If-Range``: a strong ETag and the Last-Modified date."""
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    found = {"etag": etag if etag and not etag.startswith("W/") else None, "last_modified": modified}
    return {k: v for k, v in found.items() if v}


def _transfer(
    url: str, part: _Part, *, md5: bool, verified: bool, timeout: float, progress: bool, label: str
) -> _Hashes:
    """One HTTP request that completes ``part`` (resuming it when it exists); the hashes of the whole file.

    A resume sends ``If-Range`` with the part's recorded validator. Without one, the part is resumed only when
    ``verified`` (a checksum will catch two versions joined together); otherwise it is discarded. Raises
    :class:`ConnectionError` when the connection closes before the announced length or a resumed file changed.
    """
    offset = part.path.stat().st_size if part.path.exists() else 0
    known = part.validator()
    if_range = known.get("etag") or known.get("last_modified")
    if offset and not if_range and not verified:
        part.discard()
        offset = 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers |= {"Range": f"bytes={offset}-"} | ({"If-Range": if_range} if if_range else {})
    hashes = _Hashes(md5=md5)
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        total = _content_range(err.headers.get("Content-Range"))[1]
        err.close()
        if total is not None and total != offset:
            part.discard()
            raise ConnectionError(f"the server's file has {total} bytes, the partial download {offset}") from None
        hashes.update_file(part.path)  # "range not satisfiable" at the end of the file: the part is complete
        return hashes
    with response:
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status == 206 and start != offset:
            part.discard()
            raise ConnectionError(f"asked for bytes from {offset}, the server sent them from {start}")
        got = _validator(response.headers)
        if response.status == 206 and any(known.get(k, v) != v for k, v in got.items()):
            part.discard()  # a server that ignored If-Range but not Range
            raise ConnectionError(f"the file changed on the server since the partial download ({known} -> {got})")
        if response.status != 206:  # a whole file (the server ignored Range, or If-Range failed): start again
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if offset:
            hashes.update_file(part.path)
        received = offset
        with (
            open(part.path, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            if not offset:
                part.record(got)  # after truncating the part, so the record never vouches for older bytes
            while block := response.read(_CHUNK):
                f.write(block)
                hashes.update(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:
        raise ConnectionError(f"the connection closed after {received} of {total} bytes")
    return hashes


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range: bytes first-last/total`` (or ``bytes */total``) header."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _retrying(url: str, attempt: Callable[[], T], *, retries: int, backoff: float, part: Path | None = None) -> T:
    """Run ``attempt`` until it succeeds, retrying transient errors and checksum mismatches ``retries`` times."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    for i in range(retries + 1):
        try:
            return attempt()
        except urllib.error.HTTPError as err:
            err.close()
            if err.code < 500 and err.code not in _RETRY_STATUS:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            last: Exception = err
        except (ChecksumError, *_TRANSIENT) as err:
            cause = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(cause, ssl.SSLCertVerificationError):  # another attempt would fail the same way
                raise DownloadError(f"{url}: {cause}") from err
            last = err
        if i < retries:
            time.sleep(min(backoff * 2**i, 60.0))
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    if isinstance(last, ChecksumError):
        raise ChecksumError(f"{last} (after {tries})") from None
    kept = f"; the partial download {part} is kept, run again to resume" if part and part.exists() else ""
    raise DownloadError(f"{url}: {last} (gave up after {tries}){kept}") from last


def _published_digest(list_url: str, url: str, hex_len: int, *, retries: int, backoff: float, timeout: float) -> str:
    """The digest of ``url``'s file in a published list of ``<hex digest> <file name or URL>`` lines (GLDv2's MD5
    lists, ILIAS's ``checksums.txt`` of SHA-256; a single-line list may omit the name); ``hex_len``: 32 for MD5,
    64 for SHA-256."""

    def read() -> bytes:
        request = urllib.request.Request(list_url, headers={"User-Agent": _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    text = _retrying(list_url, read, retries=retries, backoff=backoff).decode("utf-8", "replace")
    entries = [line.split(maxsplit=1) for line in text.splitlines() if line.strip()]
    name = url.rsplit("/", 1)[1]
    for fields in entries:
        if re.fullmatch(rf"[0-9a-fA-F]{{{hex_len}}}", fields[0]) and (
            len(entries) == 1 or PurePosixPath(fields[-1].lstrip("*").strip()).name == name
        ):
            return fields[0].lower()
    kind = "MD5" if hex_len == 32 else "SHA-256"
    raise DownloadError(f"{list_url}: no {kind} of {name} in it")


class _Manifest:
    """``<root>/.irlib-downloads.json``: the SHA-256 of every downloaded file and the unpacked archives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DownloadError(
                f"{path} (the download manifest) is damaged ({err}): move it aside and run again; files with a "
                f"published checksum are verified again, the others are trusted anew on first use"
            ) from None
        if not isinstance(data, dict):
            raise DownloadError(f"{path} (the download manifest) does not hold a JSON object")
        self.files: dict[str, dict[str, Any]] = data.get("files", {})
        self.extracted: dict[str, dict[str, Any]] = data.get("extracted", {})

    def record_file(self, key: str, **entry: Any) -> None:
        self.files[key] = entry
        self._save()

    def record_extracted(self, key: str, **entry: Any) -> None:
        self.extracted[key] = entry
        self._save()

    def _save(self) -> None:
        write_json(self.path, {"version": 1, "files": self.files, "extracted": self.extracted})


def _count_listed(list_file: Path, image_dir: Path) -> str:
    """How many images of a distractor list exist (revisitop1m lists more than its tarballs hold)."""
    listed = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    present = sum((image_dir / name).is_file() for name in listed)
    return f"{list_file.name}: {present:,} of the {len(listed):,} listed images are present in {image_dir}"
