"""``irlib.data.download`` against a local HTTP server: resume, retries, checksums, manifest, archives, the CLI."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import re
import ssl
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from irlib.cli import main
from irlib.data import download as dl
from irlib.data.download import (
    DATASETS,
    GND_SHA256,
    MANIFEST,
    ArchiveError,
    ChecksumError,
    DownloadError,
    Resource,
    download,
    extract_archive,
    fetch,
)
from irlib.data.ilias import IliasDataset
from irlib.io import sha256_file
from tests.conftest import shared_path

FAST = {"backoff": 0.0, "timeout": 5.0, "progress": False}


@dataclass
class Fault:
    """What the server does wrong for one path; counts are over that path's requests, in order."""

    interrupt_after: int | None = None  # announce the whole length, send this many bytes, close the connection
    interrupts: int = 1  # ... for this many first requests
    unavailable: int = 0  # the first requests answered 503
    corrupt: int = 0  # the first requests served with one byte flipped
    ignore_range: bool = False  # always answer 200 with the whole file
    validator: str = "etag"  # what identifies the version: "etag", "last-modified" (and a weak ETag) or "none"
    ignore_if_range: bool = False  # honour Range even when If-Range names another version (non-compliant)


@dataclass
class Request:
    """One logged request and the status it was answered with."""

    path: str
    range: str | None
    if_range: str | None
    status: int = 0


class FileServer:
    """In-memory files on 127.0.0.1 with Range and If-Range support, fault injection and a log of requests.

    A file's ETag and Last-Modified are derived from its content, so replacing ``files[path]`` makes a new version.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def serve(self, path: str, data: bytes, **fault) -> str:
        """Serve ``data`` at ``path`` (with a :class:`Fault`'s fields); returns its URL."""
        self.files[path] = data
        self.faults[path] = Fault(**fault)
        return self.url + path

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of every request for ``path`` (``None``: no Range)."""
        return [r.range for r in self.requests if r.path == path]

    def statuses(self, path: str) -> list[int]:
        return [r.status for r in self.requests if r.path == path]

    def validators(self, path: str) -> dict[str, str]:
        """The ``ETag`` and ``Last-Modified`` headers of the current version of ``path``."""
        digest = hashlib.sha256(self.files[path]).hexdigest()
        modified = email.utils.formatdate(int(digest[:8], 16), usegmt=True)
        return {
            "etag": {"etag": f'"{digest[:16]}"'},
            "last-modified": {"etag": f'W/"{digest[:16]}"', "last-modified": modified},
        }.get(self.faults[path].validator, {})

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def send_response(self, code: int, message: str | None = None) -> None:
                self.logged.status = code
                super().send_response(code, message)

            def do_GET(self) -> None:
                path, rng = urllib.parse.urlsplit(self.path).path, self.headers.get("Range")
                self.logged = Request(path, rng, self.headers.get("If-Range"))
                with server._lock:
                    n = len(server.ranges(path))
                    server.requests.append(self.logged)
                if path not in server.files:
                    self.send_error(404)
                    return
                data, fault, validators = server.files[path], server.faults[path], server.validators(path)
                if n < fault.unavailable:
                    self.send_error(503)
                    return
                if n < fault.corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                current = fault.ignore_if_range or self.logged.if_range in (
                    None,
                    validators.get("etag"),
                    validators.get("last-modified"),
                )
                start = 0
                if rng and not fault.ignore_range and current:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for name, value in (
                    ("ETag", validators.get("etag")),
                    ("Last-Modified", validators.get("last-modified")),
                ):
                    if value:
                        self.send_header(name, value)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault.interrupt_after is not None and n < fault.interrupts:
                    body = body[: fault.interrupt_after]
                    self.close_connection = True
                self.wfile.write(body)

        return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


def _payload(n: int = 100_000) -> bytes:
    return bytes(range(256)) * (n // 256) + b"end"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_is_verified_and_moved_into_place(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data)
    got = fetch(url, tmp_path / "f.bin", sha256=_sha(data), size=len(data), **FAST)
    assert got.path.read_bytes() == data and got.sha256 == _sha(data) and not got.reused
    assert server.ranges("/f.bin") == [None] and list(tmp_path.iterdir()) == [tmp_path / "f.bin"]


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data, interrupt_after=30_000)
    got = fetch(url, tmp_path / "f.bin", sha256=_sha(data), **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=30000-"]
    assert got.path.read_bytes() == data and not (tmp_path / "f.bin.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data, interrupt_after=30_000, ignore_range=True)
    fetch(url, tmp_path / "f.bin", sha256=_sha(data), **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=30000-"]  # asked to resume, got the whole file
    assert (tmp_path / "f.bin").read_bytes() == data


def _changed(data: bytes) -> bytes:
    """Another version of ``data``, of the same length, differing in every byte."""
    return bytes((b + 1) % 256 for b in data)


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_part_of_an_older_version_is_not_joined_to_the_changed_file(server, tmp_path, monkeypatch, validator):
    old, new = _payload(), _changed(_payload())
    url = server.serve("/f.bin", old, interrupt_after=30_000, validator=validator)
    sent = server.validators("/f.bin")
    monkeypatch.setitem(DATASETS, "toy", (Resource(url, "toy/f.bin"),))  # no checksum: trust on first use
    with pytest.raises(DownloadError, match="is kept, run again to resume"):
        download("toy", tmp_path, log=None, retries=0, **FAST)
    assert (tmp_path / "toy/f.bin.part").stat().st_size == 30_000
    server.files["/f.bin"] = new
    download("toy", tmp_path, log=None, retries=0, **FAST)
    assert (tmp_path / "toy/f.bin").read_bytes() == new
    resume = server.requests[-1]
    assert resume.range == "bytes=30000-" and resume.status == 200  # If-Range failed: the whole new file
    assert resume.if_range == (sent["etag"] if validator == "etag" else sent["last-modified"])  # never a weak ETag
    assert json.loads((tmp_path / MANIFEST).read_text())["files"]["toy/f.bin"]["sha256"] == _sha(new)
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["f.bin"]


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_an_unchanged_file_resumes_with_if_range(server, tmp_path, validator):
    data = _payload()
    url = server.serve("/f.bin", data, interrupt_after=30_000, validator=validator)
    fetch(url, tmp_path / "f.bin", retries=1, **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=30000-"] and server.statuses("/f.bin") == [200, 206]
    assert server.requests[-1].if_range is not None
    assert (tmp_path / "f.bin").read_bytes() == data and list(tmp_path.iterdir()) == [tmp_path / "f.bin"]


def test_without_a_validator_only_a_checksummed_part_resumes(server, tmp_path):
    data = _payload()
    a, b = (server.serve(p, data, interrupt_after=30_000, validator="none") for p in ("/a.bin", "/b.bin"))
    fetch(a, tmp_path / "a.bin", retries=1, **FAST)  # nothing can tell which version the part holds: start again
    assert server.ranges("/a.bin") == [None, None] and (tmp_path / "a.bin").read_bytes() == data
    fetch(b, tmp_path / "b.bin", sha256=_sha(data), retries=1, **FAST)  # the checksum would catch a joined file
    assert server.ranges("/b.bin") == [None, "bytes=30000-"] and server.requests[-1].if_range is None
    assert (tmp_path / "b.bin").read_bytes() == data


def test_a_server_ignoring_if_range_is_caught_by_the_changed_etag(server, tmp_path):
    old, new = _payload(), _changed(_payload())
    url = server.serve("/f.bin", old, interrupt_after=30_000, ignore_if_range=True)
    with pytest.raises(DownloadError):
        fetch(url, tmp_path / "f.bin", retries=0, **FAST)
    server.files["/f.bin"] = new
    fetch(url, tmp_path / "f.bin", retries=1, **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=30000-", None] and server.statuses("/f.bin") == [200, 206, 200]
    assert (tmp_path / "f.bin").read_bytes() == new


def test_a_tls_error_mid_transfer_is_retried_and_resumed(server, tmp_path, monkeypatch):
    data = _payload()
    url = server.serve("/f.bin", data)
    real_urlopen = urllib.request.urlopen
    opened = []

    def flaky_urlopen(request, *, timeout):
        response = real_urlopen(request, timeout=timeout)
        opened.append(response)
        if len(opened) == 1:  # the first response breaks after 30,000 bytes, as a corrupted TLS record would
            real_read, reads = response.read, []

            def read(n=-1):
                reads.append(n)
                if len(reads) > 1:
                    raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed")
                return real_read(30_000)

            response.read = read
        return response

    monkeypatch.setattr(urllib.request, "urlopen", flaky_urlopen)
    fetch(url, tmp_path / "f.bin", retries=1, **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=30000-"] and server.statuses("/f.bin") == [200, 206]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_certificate_that_does_not_verify_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def refuse(request, *, timeout):
        calls.append(request.full_url)
        raise urllib.error.URLError(ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DownloadError, match=r"https://host.invalid/f.bin: .*certificate verify failed"):
        fetch("https://host.invalid/f.bin", tmp_path / "f.bin", retries=3, **FAST)
    assert calls == ["https://host.invalid/f.bin"]


def test_unavailable_server_is_retried(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data, unavailable=2)
    fetch(url, tmp_path / "f.bin", sha256=_sha(data), retries=2, **FAST)
    assert len(server.ranges("/f.bin")) == 3 and (tmp_path / "f.bin").read_bytes() == data


def test_exhausted_retries_keep_the_part_and_the_next_call_resumes(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data, interrupt_after=20_000, interrupts=2)
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    with pytest.raises(DownloadError, match=r"gave up after 2 attempts.*is kept, run again to resume") as err:
        fetch(url, dest, sha256=_sha(data), retries=1, **FAST)
    assert url in str(err.value) and str(part) in str(err.value)
    assert not dest.exists() and part.stat().st_size == 40_000
    fetch(url, dest, sha256=_sha(data), retries=0, **FAST)
    assert server.ranges("/f.bin") == [None, "bytes=20000-", "bytes=40000-"]
    assert dest.read_bytes() == data and not part.exists()


def test_corrupted_file_raises_and_leaves_nothing(server, tmp_path):
    data = _payload()
    bad = data[:-1] + bytes([data[-1] ^ 0xFF])
    url = server.serve("/f.bin", data, corrupt=99)
    with pytest.raises(ChecksumError) as err:
        fetch(url, tmp_path / "f.bin", sha256=_sha(data), retries=2, **FAST)
    message = str(err.value)
    assert all(s in message for s in (url, str(tmp_path / "f.bin"), _sha(data), _sha(bad), "after 3 attempts"))
    assert list(tmp_path.iterdir()) == [] and len(server.ranges("/f.bin")) == 3


def test_a_corrupted_transfer_is_downloaded_again(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data, corrupt=1)
    fetch(url, tmp_path / "f.bin", sha256=_sha(data), retries=1, **FAST)
    assert server.ranges("/f.bin") == [None, None] and (tmp_path / "f.bin").read_bytes() == data


def test_client_error_fails_at_once_naming_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.bin: HTTP 404"):
        fetch(server.url + "/missing.bin", tmp_path / "m.bin", retries=3, **FAST)
    assert len(server.requests) == 1 and list(tmp_path.iterdir()) == []


def test_a_complete_part_is_accepted_on_range_not_satisfiable(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(data)
    fetch(url, tmp_path / "f.bin", sha256=_sha(data), **FAST)
    assert server.ranges("/f.bin") == [f"bytes={len(data)}-"] and (tmp_path / "f.bin").read_bytes() == data


def test_existing_file_is_reused_without_a_request_or_refused_unless_forced(server, tmp_path):
    data = _payload()
    url = server.serve("/f.bin", data)
    dest = tmp_path / "f.bin"
    fetch(url, dest, sha256=_sha(data), **FAST)
    assert fetch(url, dest, sha256=_sha(data), **FAST).reused and len(server.requests) == 1
    dest.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match="exists but its sha256 is"):
        fetch(url, dest, sha256=_sha(data), **FAST)
    assert len(server.requests) == 1
    assert not fetch(url, dest, sha256=_sha(data), force=True, **FAST).reused and dest.read_bytes() == data


def test_gldv2_style_md5_list(server, tmp_path, monkeypatch):
    tar = _tar({"0/1/2/0123456789abcdef.jpg": b"jpeg 1", "f/e/d/fedcba9876543210.jpg": b"jpeg 2"}, mode="w")
    md5 = hashlib.md5(tar).hexdigest()
    url = server.serve("/train/images_000.tar", tar)
    server.serve("/md5sum/train/md5.images_000.txt", f"{'1' * 32}  images_001.tar\n{md5}  images_000.tar\n".encode())
    server.serve("/md5sum/train/md5.bad.txt", f"{'0' * 32}  images_000.tar\n".encode())
    md5_url = server.url + "/md5sum/train/md5.images_000.txt"
    res = Resource(url, "gld/train/images_000.tar", md5_url=md5_url, extract=True, extract_to="gld/train")
    monkeypatch.setitem(DATASETS, "toy-gld", (res,))
    download("toy-gld", tmp_path, log=None, **FAST)
    assert (tmp_path / "gld/train/0/1/2/0123456789abcdef.jpg").read_bytes() == b"jpeg 1"
    assert (tmp_path / "gld/train/f/e/d/fedcba9876543210.jpg").exists()
    assert not (tmp_path / "gld/train/images_000.tar").exists()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["files"]["gld/train/images_000.tar"]["checked"] == f"published md5 {md5}"
    server.requests.clear()
    download("toy-gld", tmp_path, log=None, **FAST)
    assert server.requests == []

    bad = Resource(url, "other/images_000.tar", md5_url=server.url + "/md5sum/train/md5.bad.txt")
    monkeypatch.setitem(DATASETS, "toy-bad", (bad,))
    with pytest.raises(ChecksumError, match=f"md5 is {md5}, expected {'0' * 32}"):
        download("toy-bad", tmp_path, log=None, retries=0, **FAST)
    assert list((tmp_path / "other").iterdir()) == []


def test_unpublished_checksum_is_recorded_on_first_use_and_enforced_later(server, tmp_path, monkeypatch):
    url = server.serve("/list.txt", b"a.jpg\nb.jpg\n")
    other = Resource(server.serve("/n.txt", b"n"), "toy/n.txt")
    monkeypatch.setitem(DATASETS, "toy", (Resource(url, "toy/list.txt"), other))
    lines: list[str] = []
    download("toy", tmp_path, log=lines.append, **FAST)
    assert sum("no checksum is published" in line for line in lines) == 1
    entry = json.loads((tmp_path / MANIFEST).read_text())["files"]["toy/list.txt"]
    assert entry["sha256"] == _sha(b"a.jpg\nb.jpg\n") and entry["checked"] == "trust on first use"

    (tmp_path / "toy/list.txt").unlink()
    server.files["/list.txt"] = b"a.jpg\nc.jpg\n"
    with pytest.raises(ChecksumError, match=r"recorded when the file was first downloaded.*remove its entry"):
        download("toy", tmp_path, log=None, retries=0, **FAST)
    assert not (tmp_path / "toy/list.txt").exists() and not (tmp_path / "toy/list.txt.part").exists()


@pytest.fixture
def roxford_server(server) -> FileServer:
    """The roxford5k files on the test server: a small tgz (nested and top-level images) and the real gnd pkl."""
    gnd = shared_path("data", "revisitop", "gnd_roxford5k.pkl").read_bytes()
    tgz = _tar(
        {
            "oxbuild_images/all_souls_000000.jpg": b"\xff\xd8 a",
            "oxbuild_images/x/radcliffe_camera_000001.jpg": b"\xff\xd8 b",
            "magdalen_000002.jpg": b"\xff\xd8 c",
        }
    )
    server.serve("/~vgg/data/oxbuildings/oxbuild_images-v1.tgz", tgz)
    server.serve("/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl", gnd)
    return server


def test_roxford5k_from_a_mirror(roxford_server, tmp_path):
    folder = download("roxford5k", tmp_path, mirror=roxford_server.url + "/", log=None, **FAST)
    assert folder == tmp_path / "roxford5k"
    assert sorted(p.name for p in (folder / "jpg").iterdir()) == [
        "all_souls_000000.jpg",
        "magdalen_000002.jpg",
        "radcliffe_camera_000001.jpg",
    ]
    assert (folder / "jpg/radcliffe_camera_000001.jpg").read_bytes() == b"\xff\xd8 b"
    assert sha256_file(folder / "gnd_roxford5k.pkl") == GND_SHA256["roxford5k"][0]
    assert sorted(p.name for p in folder.iterdir()) == ["gnd_roxford5k.pkl", "jpg"]  # archive deleted
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["extracted"]["roxford5k/jpg/oxbuild_images-v1.tgz"] == {"into": "roxford5k/jpg", "files": 3}
    assert manifest["files"]["roxford5k/gnd_roxford5k.pkl"]["checked"] == "published sha256"

    roxford_server.requests.clear()
    download("roxford5k", tmp_path, mirror=roxford_server.url, log=None, **FAST)
    assert roxford_server.requests == []


def test_cli_downloads_and_reports_errors_on_one_line(roxford_server, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["download", "roxford5k", "--root", str(root), "--mirror", roxford_server.url]) == 0
    assert "roxford5k ready in" in capsys.readouterr().out and (root / "roxford5k/gnd_roxford5k.pkl").exists()
    assert main(["download", "rparis6k", "--root", str(root), "--mirror", roxford_server.url, "--retries", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("irlib download: error: ") and "paris_1-v1.tgz: HTTP 404" in err
    assert main(["download", "roxford5k", "nosuchset", "--root", str(root)]) == 2
    assert "unknown dataset nosuchset" in capsys.readouterr().err


def test_cli_lists_the_datasets(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS)
    assert main(["download", "--list", "rparis6k"]) == 0
    assert "paris_2-v1.tgz -> rparis6k/jpg/paris_2-v1.tgz" in capsys.readouterr().out


def test_revisitop1m_counts_the_listed_images_present(server, tmp_path, monkeypatch):
    listed = b"00/000.jpg\n00/001.jpg\n01/002.jpg\n"
    tars = [_tar({"00/000.jpg": b"a", "00/001.jpg": b"b"}), _tar({"02/003.jpg": b"c"})]
    resources = [Resource(server.serve("/r1m/revisitop1m.txt", listed), "revisitop1m/revisitop1m.txt")]
    resources += [
        dl._archive(server.serve(f"/r1m/jpg/revisitop1m.{i}.tar.gz", t), "revisitop1m/jpg") for i, t in enumerate(tars)
    ]
    monkeypatch.setitem(DATASETS, "revisitop1m", tuple(resources))
    lines: list[str] = []
    download("revisitop1m", tmp_path, log=lines.append, **FAST)
    assert (tmp_path / "revisitop1m/jpg/00/001.jpg").read_bytes() == b"b"
    assert lines[-1].startswith("revisitop1m.txt: 2 of the 3 listed images are present")


def test_ilias_core_and_id_lists_from_a_mirror(server, tmp_path):
    core = {
        "ilias_core/bold_bimp_000/query/Q000_00.jpg": b"\xff\xd8 q",
        "ilias_core/bold_bimp_000/query/Q000_00_bbox.txt": b"1 2 3 4\n",
        "ilias_core/bold_bimp_000/query/T000.txt": b"a bold bimp\n",
        "ilias_core/bold_bimp_000/pos/P000_00.jpg": b"\xff\xd8 p",
        "ilias_core/bold_bimp_000/pos/P000_00_bbox.txt": b"5 6 7 8\n",
    }
    ids = {
        "image_query_ids.txt": b"bold_bimp_000/query/Q000_00.jpg\n",
        "text_query_ids.txt": b"bold_bimp_000/query/T000\n",
        "positive_ids.txt": b"bold_bimp_000/pos/P000_00.jpg,0.25,1\n",
    }
    tar = _tar(core, mode="w")
    server.serve("/ilias_data/ilias_core.tar", tar)
    checksums = f"{_sha(b'other')} https://vrg.fel.cvut.cz/ilias_data/yfcc100m/yfcc100m_000.tar\n"
    checksums += f"{_sha(tar)} https://vrg.fel.cvut.cz/ilias_data/ilias_core.tar\n"  # the official format
    server.serve("/ilias_data/checksums.txt", checksums.encode())
    for name, text in ids.items():
        server.serve(f"/ilias_data/image_ids/{name}", text)
    folder = download("ilias", tmp_path, mirror=server.url, log=None, **FAST)
    assert folder == tmp_path / "ilias" and sorted(p.name for p in folder.iterdir()) == ["ilias_core", "image_ids"]
    ds = IliasDataset.from_dir(folder, id_dir=folder / "image_ids")
    assert [q.id for q in ds.image_queries] == ["bold_bimp_000/query/Q000_00.jpg"]
    assert ds.id_files.positive_info == {"bold_bimp_000/pos/P000_00.jpg": (0.25, 1)}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["extracted"]["ilias/ilias_core.tar"] == {"into": "ilias", "files": 5}
    assert manifest["files"]["ilias/image_ids/positive_ids.txt"]["checked"] == "trust on first use"
    assert manifest["files"]["ilias/ilias_core.tar"]["checked"] == "published sha256"  # from checksums.txt
    assert DATASETS["ilias"][0].url == "https://vrg.fel.cvut.cz/ilias_data/ilias_core.tar"
    # a core archive that is not the published one is refused
    server.serve(
        "/ilias_data/checksums.txt", f"{_sha(b'x')} https://vrg.fel.cvut.cz/ilias_data/ilias_core.tar\n".encode()
    )
    with pytest.raises(ChecksumError):
        download("ilias", tmp_path / "again", mirror=server.url, log=None, **FAST)


def test_a_damaged_manifest_is_named(server, tmp_path):
    (tmp_path / MANIFEST).write_text('{"version": 1, "files": {')
    with pytest.raises(DownloadError, match=r"irlib-downloads.json \(the download manifest\) is damaged"):
        download("ilias", tmp_path, mirror=server.url, log=None, **FAST)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil.txt"),
        tarfile.TarInfo("/tmp/evil.txt"),
        tarfile.TarInfo("ok/../../evil.txt"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot"],
)
def test_archive_members_outside_the_folder_are_refused(tmp_path, member):
    member.size = 4
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(member, io.BytesIO(b"evil"))
    archive = tmp_path / "a.tgz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match=rf"{re.escape(str(archive))}: refusing member"):
        extract_archive(archive, tmp_path / "out" / "jpg")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.tgz", "jpg", "out"]


def test_links_and_zip_traversal_are_refused(tmp_path):
    link = tarfile.TarInfo("pw")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(link)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match="refusing member 'pw'"):
        extract_archive(tmp_path / "l.tar", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(ArchiveError, match="refusing member '../evil.txt'"):
        extract_archive(tmp_path / "z.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_is_unpacked_keeping_its_folders(tmp_path):
    with zipfile.ZipFile(tmp_path / "info_files.zip", "w") as zf:
        zf.writestr("info_files/cars/train.json", b"[]")
    assert extract_archive(tmp_path / "info_files.zip", tmp_path / "uned") == 1
    assert (tmp_path / "uned/info_files/cars/train.json").read_bytes() == b"[]"


@pytest.mark.parametrize("cut", [0.5, None], ids=["truncated", "garbage"])
def test_corrupt_archive_is_named(tmp_path, cut):
    data = _tar({f"{i}.jpg": _payload(5000) for i in range(20)})
    archive = tmp_path / "broken.tgz"
    archive.write_bytes(data[: int(len(data) * cut)] if cut else b"not an archive at all")
    with pytest.raises(ArchiveError, match=rf"{re.escape(str(archive))} is not a readable archive"):
        extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_flattening_refuses_two_files_of_the_same_name(tmp_path):
    (tmp_path / "a.tgz").write_bytes(_tar({"x/im.jpg": b"1", "y/im.jpg": b"2"}))
    with pytest.raises(ArchiveError, match="same file name"):
        extract_archive(tmp_path / "a.tgz", tmp_path / "jpg", flatten=True)


def test_the_dataset_table():
    assert dl.list_downloads() == sorted(DATASETS)
    train = [r for r in DATASETS["gldv2-clean"] if r.extract]
    assert len(train) == 500 and train[-1].url.endswith("/google-landmark/train/images_499.tar")
    assert train[7].md5_url == "https://s3.amazonaws.com/google-landmark/md5sum/train/md5.images_007.txt"
    assert train[7].dest == "gldv2/train/images_007.tar" and train[7].extract_to == "gldv2/train"
    retrieval = [r.extract_to for r in DATASETS["gldv2-retrieval"] if r.extract]
    assert (retrieval.count("gldv2/index"), retrieval.count("gldv2/test")) == (100, 20)
    r1m = [r for r in DATASETS["revisitop1m"] if r.extract]
    assert len(r1m) == 100 and r1m[-1].url.endswith("/revisitop1m/jpg/revisitop1m.100.tar.gz")
    assert all(r.flatten for name in ("roxford5k", "rparis6k") for r in DATASETS[name] if r.extract)
    assert dl._mirrored("https://host.org/a/b.tgz?x=1", "http://m.local/pre/") == "http://m.local/pre/a/b.tgz?x=1"


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_recorded_gnd_checksums_match_the_reference_files(name):
    path = shared_path("data", "revisitop", f"gnd_{name}.pkl")
    assert (sha256_file(path), path.stat().st_size) == GND_SHA256[name]
