"""The COCO downloader against a local HTTP server: resume, retries, integrity, safe extraction, end to end."""

import io
import json
import random
import stat
import zipfile

import pytest
from http_server import FileServer
from PIL import Image

from captioner.data.image_io import load_image_rgb
from captioner.infra.download import (
    COCO_FILES,
    DownloadError,
    RemoteFile,
    check_zip,
    download_file,
    fetch_coco,
    is_extracted,
    safe_extract,
)

DATA = random.Random(0).randbytes(300_000)
FAST = dict(backoff=0.001, chunk_size=16_384)


def make_zip(path, members):
    """``members``: ``{name: bytes}`` or ``{ZipInfo: bytes}``; deflated like COCO's archives."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------
# download_file

def test_cut_transfer_resumes_with_range_and_ends_byte_identical(tmp_path):
    received = []
    with FileServer({"/f.bin": DATA}, cuts={"/f.bin": [100_000]}) as server:
        path = download_file(server.url("/f.bin"), tmp_path / "f.bin", progress=received.append, **FAST)
    assert path == tmp_path / "f.bin" and path.read_bytes() == DATA
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]
    assert sum(received) == len(DATA)  # every byte crossed the network once
    assert not (tmp_path / "f.bin.part").exists()


def test_server_ignoring_range_still_yields_the_right_file(tmp_path):
    with FileServer({"/f.bin": DATA}, cuts={"/f.bin": [100_000]}, ignore_range=True) as server:
        download_file(server.url("/f.bin"), tmp_path / "f.bin", expected_size=len(DATA), **FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]  # asked, got 200, started over


def test_part_file_left_by_a_killed_run_is_continued(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA[:123_456])
    with FileServer({"/f.bin": DATA}) as server:
        download_file(server.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert server.requests == [("/f.bin", "bytes=123456-")]


def test_complete_files_are_not_requested_again(tmp_path):
    (tmp_path / "done.bin").write_bytes(DATA)
    (tmp_path / "whole.bin.part").write_bytes(DATA)  # complete, but killed before the rename
    (tmp_path / "unsized.bin.part").write_bytes(DATA)
    with FileServer({"/done.bin": DATA, "/whole.bin": DATA, "/unsized.bin": DATA}) as server:
        download_file(server.url("/done.bin"), tmp_path / "done.bin", expected_size=len(DATA), **FAST)
        download_file(server.url("/done.bin"), tmp_path / "done.bin", **FAST)
        download_file(server.url("/whole.bin"), tmp_path / "whole.bin", expected_size=len(DATA), **FAST)
        download_file(server.url("/unsized.bin"), tmp_path / "unsized.bin", **FAST)
    # Only the .part of unknown size needed a question, answered "416: nothing left after byte N".
    assert server.requests == [("/unsized.bin", f"bytes={len(DATA)}-")]
    assert (tmp_path / "whole.bin").read_bytes() == DATA == (tmp_path / "unsized.bin").read_bytes()


def test_transient_errors_are_retried_and_permanent_ones_are_not(tmp_path):
    messages = []
    with FileServer({"/f.bin": DATA}, failures={"/f.bin": [503, 500]}) as server:
        download_file(server.url("/f.bin"), tmp_path / "f.bin", log=messages.append, **FAST)
        assert (tmp_path / "f.bin").read_bytes() == DATA
        assert len(server.requests) == 3 and len(messages) == 2 and "503" in messages[0]
        with pytest.raises(DownloadError, match="404"):
            download_file(server.url("/missing.zip"), tmp_path / "missing.zip", **FAST)
        assert server.requests[3:] == [("/missing.zip", None)]  # no retry for a 404


def test_gives_up_after_the_retries_and_keeps_the_part_file(tmp_path):
    with FileServer({"/f.bin": DATA}, cuts={"/f.bin": [1000] * 10}) as server:
        with pytest.raises(DownloadError, match="giving up after 3 attempts"):
            download_file(server.url("/f.bin"), tmp_path / "f.bin", retries=2, **FAST)
    assert len(server.requests) == 3
    assert (tmp_path / "f.bin.part").read_bytes() == DATA[:3000]  # resumed twice, 1000 bytes each time
    assert not (tmp_path / "f.bin").exists()


def test_size_mismatch_is_an_error(tmp_path):
    with FileServer({"/f.bin": DATA}) as server:
        with pytest.raises(DownloadError, match="expected 299999"):
            download_file(server.url("/f.bin"), tmp_path / "f.bin", expected_size=299_999, **FAST)
    assert not (tmp_path / "f.bin").exists()
    (tmp_path / "g.bin").write_bytes(b"short")
    with pytest.raises(DownloadError, match="exists with 5 bytes"):
        download_file("http://127.0.0.1:9/never", tmp_path / "g.bin", expected_size=len(DATA), **FAST)


# ------------------------------------------------------------------------------------------------
# check_zip and safe_extract

def test_check_zip_detects_corruption(tmp_path):
    payload = random.Random(1).randbytes(20_000)
    good = make_zip(tmp_path / "good.zip", {"a/b.bin": payload, "c.txt": b"hello " * 100})
    check_zip(good)
    data = bytearray(good.read_bytes())
    data[3000] ^= 0xFF  # inside the compressed bytes of a/b.bin
    (tmp_path / "flipped.zip").write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="flipped.zip"):
        check_zip(tmp_path / "flipped.zip")
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:10_000])
    with pytest.raises(DownloadError, match="not a valid zip"):
        check_zip(tmp_path / "cut.zip")
    (tmp_path / "page.zip").write_text("<html>503 Service Unavailable</html>")
    with pytest.raises(DownloadError, match="not a valid zip"):
        check_zip(tmp_path / "page.zip")


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"])
def test_entries_escaping_the_target_are_refused(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"ok", name: b"pwned"})
    target = tmp_path / "out" / "inner"
    with pytest.raises(DownloadError, match="refusing entry"):
        safe_extract(archive, target)
    assert files_under(tmp_path) == ["bad.zip"]  # nothing written, inside or outside the target


def test_symlinks_are_refused_in_the_archive_and_in_the_target(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", {link: b"/etc/passwd"})
    with pytest.raises(DownloadError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out" / "annotations").symlink_to(outside)
    archive = make_zip(tmp_path / "ann.zip", {"annotations/captions.json": b"{}"})
    with pytest.raises(DownloadError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_extraction_is_complete_skipped_when_done_and_redone_when_interrupted(tmp_path):
    members = {"val2017/": b"", "val2017/1.jpg": b"x" * 5000, "val2017/2.jpg": b"y" * 7000,
               "annotations/captions_val2017.json": b'{"images": []}'}
    archive = make_zip(tmp_path / "val.zip", members)
    target = tmp_path / "coco"
    paths = safe_extract(archive, target)
    assert paths == [target / n for n in members if not n.endswith("/")]
    assert all((target / n).read_bytes() == d for n, d in members.items() if not n.endswith("/"))
    assert is_extracted("val.zip", target)
    mtime = (target / "val2017/1.jpg").stat().st_mtime_ns
    assert safe_extract(archive, target) == paths
    assert (target / "val2017/1.jpg").stat().st_mtime_ns == mtime  # skipped: stamp present
    # An interrupted run: no stamp, one member missing, one cut short.
    (target / ".val.zip.extracted").unlink()
    (target / "val2017/2.jpg").unlink()
    (target / "annotations/captions_val2017.json").write_bytes(b'{"ima')
    safe_extract(archive, target)
    assert all((target / n).read_bytes() == d for n, d in members.items() if not n.endswith("/"))
    assert (target / "val2017/1.jpg").stat().st_mtime_ns == mtime  # complete member kept
    assert not [p for p in target.rglob(".*.part")]


# ------------------------------------------------------------------------------------------------
# fetch_coco end to end

def jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_fetch_coco_end_to_end(tmp_path):
    captions = {"info": {}, "licenses": [], "images": [{"id": 139, "file_name": "000000000139.jpg",
                                                        "width": 40, "height": 30}],
                "annotations": [{"id": 1, "image_id": 139, "caption": "A red square."}]}
    archives = {
        "val2017.zip": {"val2017/000000000139.jpg": jpeg((200, 0, 0)), "val2017/000000000285.jpg": jpeg((0, 0, 200))},
        "train2017.zip": {"train2017/000000000009.jpg": jpeg((0, 200, 0))},
        "annotations_trainval2017.zip": {"annotations/captions_val2017.json": json.dumps(captions).encode(),
                                         "annotations/captions_train2017.json": b'{"images": [], "annotations": []}'},
        "image_info_test2017.zip": {"annotations/image_info_test2017.json": b'{"images": []}'},
    }
    served, files = {}, []
    for remote in COCO_FILES:
        if remote.name in archives:
            data = make_zip(tmp_path / remote.name, archives[remote.name]).read_bytes()
            path = "/" + remote.url.split("/", 3)[3]  # "/zips/val2017.zip", as on the real site
            served[path] = data
            files.append(RemoteFile(remote.name, remote.url, len(data) if remote.size else None))
    coco = tmp_path / "coco"
    half = len(served["/zips/val2017.zip"]) // 2
    with FileServer(served, cuts={"/zips/val2017.zip": [half]}) as server:
        fetch_coco(coco, files, base_url=server.url(), backoff=0.001)
        first = list(server.requests)
        fetch_coco(coco, files, base_url=server.url(), backoff=0.001)
        assert server.requests == first  # everything already extracted: nothing requested
    assert ("/zips/val2017.zip", f"bytes={half}-") in first and len(first) == len(files) + 1
    assert files_under(coco) == sorted(
        [n for members in archives.values() for n in members] + [f"downloads/{f.name}" for f in files]
        + [f".{f.name}.extracted" for f in files])
    assert json.loads((coco / "annotations/captions_val2017.json").read_text()) == captions
    red = load_image_rgb(coco / "val2017/000000000139.jpg")
    assert red.size == (40, 30) and red.getpixel((20, 15))[0] > 180
    assert all(is_extracted(f.name, coco) for f in files)

    fresh = tmp_path / "fresh"
    with FileServer(served) as server:
        fetch_coco(fresh, files, base_url=server.url() + "/", delete_zips=True, backoff=0.001)
    assert not list((fresh / "downloads").iterdir())
    green = archives["train2017.zip"]["train2017/000000000009.jpg"]
    assert (fresh / "train2017/000000000009.jpg").read_bytes() == green


def test_coco_file_list_points_at_the_official_site():
    names = {f.name for f in COCO_FILES}
    assert names == {"train2017.zip", "val2017.zip", "test2017.zip", "unlabeled2017.zip",
                     "annotations_trainval2017.zip", "image_info_test2017.zip", "image_info_unlabeled2017.zip"}
    for f in COCO_FILES:
        assert f.url.startswith("http://images.cocodataset.org/") and f.url.endswith("/" + f.name)
        assert f.size is None or f.size > 1_000_000
