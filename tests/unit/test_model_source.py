"""The default model is served only as its pinned bytes: a changed cached copy is rebuilt, a changed package
refused in one line. Real files: the installed packages, copied and altered in tmp_path."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from whisper_stream.engines import model_integrity, model_source
from whisper_stream.engines.model_integrity import (
    DEFAULT_MODEL_SHA256,
    ModelIntegrityError,
    dir_mismatch,
    sha256_file,
)


def _flip_one_byte(path: Path) -> None:
    """Change one byte in place and put the modification time back, as a quiet edit would."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WHISPER_STREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models" / "whisper-base"


def test_the_joined_default_model_is_the_pinned_bytes(cache):
    assert model_source.resolve_model(None) == str(cache)
    assert {p.name for p in cache.iterdir()} == set(DEFAULT_MODEL_SHA256)
    assert all(sha256_file(cache / name) == digest for name, digest in DEFAULT_MODEL_SHA256.items())


@pytest.mark.parametrize("name", ["model.bin", "config.json"])
def test_a_cached_copy_with_one_byte_changed_is_rebuilt_never_served(cache, caplog, name):
    model_source.resolve_model(None)
    _flip_one_byte(cache / name)
    with caplog.at_level(logging.WARNING, logger="whisper_stream.engines.model_source"):
        served = Path(model_source.resolve_model(None))
    assert sha256_file(served / name) == DEFAULT_MODEL_SHA256[name]
    assert dir_mismatch(served, DEFAULT_MODEL_SHA256) is None
    [record] = caplog.records
    assert "rebuilding" in record.getMessage() and DEFAULT_MODEL_SHA256[name] in record.getMessage()


def test_a_file_added_to_the_cached_copy_is_rebuilt_away(cache):
    model_source.resolve_model(None)
    # faster-whisper reads preprocessor_config.json when present: it would change the features silently
    (cache / "preprocessor_config.json").write_text('{"feature_size": 128}')
    served = Path(model_source.resolve_model(None))
    assert {p.name for p in served.iterdir()} == set(DEFAULT_MODEL_SHA256)


def _fake_packages(root: Path, flip: str | None) -> tuple[str, str]:
    """Copies of the two installed packages under other names, one file of them altered."""
    names = ("fake_whisper_base_1", "fake_whisper_base_2")
    for real, fake in zip(model_source._PARTS, names, strict=True):
        src = model_source._package_dir(real)
        assert src is not None, "the [model] extra is not installed"
        shutil.copytree(src, root / fake / "data")
        (root / fake / "__init__.py").write_text("")
    if flip:
        _flip_one_byte(next(root.glob(f"*/data/{flip}")))
    return names


def test_a_changed_package_file_is_refused_in_one_line(cache, tmp_path, monkeypatch):
    packages = _fake_packages(tmp_path / "site", flip="model.bin.part1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelIntegrityError) as exc:
        model_source.assemble_default_model(packages)
    line = str(exc.value)
    assert "\n" not in line and "model.bin.part1" in line and "reinstall" in line, line
    assert model_integrity.PACKAGE_SHA256["model.bin.part1"] in line  # expected, and the actual next to it
    assert not cache.exists()  # nothing joined, nothing to load


def test_intact_copies_of_the_packages_join_to_the_pinned_model(cache, tmp_path, monkeypatch):
    packages = _fake_packages(tmp_path / "site", flip=None)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert dir_mismatch(model_source.assemble_default_model(packages), DEFAULT_MODEL_SHA256) is None


def test_any_model_directory_against_a_sha256sum_manifest(tmp_path, capsys):
    src = model_source._package_dir(model_source._PARTS[1])
    assert src is not None
    model = tmp_path / "model"
    model.mkdir()
    small = {n: d for n, d in DEFAULT_MODEL_SHA256.items() if n != "model.bin"}
    for name in small:
        shutil.copy(src / name, model / name)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text("".join(f"{d}  {n}\n" for n, d in small.items()))
    assert model_integrity.main([str(model), str(manifest)]) == 0
    _flip_one_byte(model / "tokenizer.json")
    assert model_integrity.main([str(model), str(manifest)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer.json" in err and small["tokenizer.json"] in err, err
