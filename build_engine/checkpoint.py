"""OpenAI Whisper checkpoints: resumable download with a progress bar, and SHA-256 verification.

OpenAI's checkpoint URLs carry the file's SHA-256 as their second-to-last path segment, so the expected hash
never has to be copied by hand. A partial download lives in `<name>.part` and is resumed with an HTTP Range
request; the file gets its final name only after its hash matched, so a present `large-v3.pt` is a good one.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.error import HTTPError

_BASE = "https://openaipublic.azureedge.net/main/whisper/models"
MODEL_URLS = {
    "large-v3": f"{_BASE}/e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb/large-v3.pt",
    "large-v2": f"{_BASE}/81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/large-v2.pt",
    "large-v3-turbo": (
        f"{_BASE}/aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a/large-v3-turbo.pt"
    ),
}
CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """The file's SHA-256 is not the expected one: corrupt, truncated or a different model."""


def expected_sha256(url: str) -> str:
    """The hash embedded in an OpenAI checkpoint URL (…/models/<sha256>/<name>.pt)."""
    parts = url.rstrip("/").split("/")
    if len(parts) < 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
        raise ValueError(f"no SHA-256 in URL {url}")
    return parts[-2]


def sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, _bar(size, f"sha256 {path.name}", progress) as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify(path: Path, sha256: str, progress: bool = False) -> str:
    """Raise ChecksumError unless the file's SHA-256 is `sha256`; return the hash."""
    actual = sha256_file(path, progress)
    if actual != sha256.lower():
        raise ChecksumError(f"{path}: SHA-256 {actual} != expected {sha256}; refusing this checkpoint")
    return actual


def _bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)


Opener = Callable[[urllib.request.Request], Any]


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    opener: Opener | None = None,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify the hash (from the URL unless given), rename.

    A server that ignores the Range header (200 instead of 206) restarts the file from zero; 416 means the
    part is already complete. A hash mismatch removes the part file (a resume could never repair it).
    """
    sha256 = sha256 or expected_sha256(url)
    opener = opener or (lambda req: urllib.request.urlopen(req, timeout=60))  # noqa: S310 - https URL
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        verify(dest, sha256, progress)
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = opener(req)
    except HTTPError as e:
        if e.code != 416:
            raise
        resp = None  # requested range starts at the end: already complete
    if resp is not None:
        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            if have and status != 206:
                have = 0  # range ignored: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as out, _bar(total, dest.name, progress) as bar:
                bar.update(have)
                _copy(resp, out, bar)
    try:
        verify(part, sha256, progress)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _copy(src: Any, out: BinaryIO, bar: Any) -> None:
    while chunk := src.read(CHUNK):
        out.write(chunk)
        bar.update(len(chunk))


def prepare_checkpoint(
    source: str | None,
    model_name: str,
    model_dir: Path,
    sha256: str | None = None,
    verify_hash: bool = True,
    progress: bool = True,
) -> tuple[Path, str | None]:
    """Make `model_dir/<model_name>.pt` (the name convert_checkpoint.py expects) from a URL or a local file.

    `source`: None (OpenAI's URL for the model), an http(s) URL, or a local path (linked, not copied).
    Returns the checkpoint path and its SHA-256: verified against the expected one, or with verify_hash=False
    the file's own hash, unverified (the manifest still records what was built from).
    """
    target = model_dir / f"{model_name}.pt"
    if source is None or source.startswith(("http://", "https://")):
        url = source or MODEL_URLS.get(model_name)
        if url is None:
            raise ValueError(f"no known URL for {model_name}; pass --checkpoint URL or PATH")
        digest = sha256 or expected_sha256(url)
        download(url, target, digest, progress)
        return target, digest
    local = Path(source).expanduser().resolve()
    if not local.is_file():
        raise FileNotFoundError(local)
    digest = sha256 or (expected_sha256(MODEL_URLS[model_name]) if model_name in MODEL_URLS else None)
    if verify_hash:
        if digest is None:
            raise ValueError(f"no known SHA-256 for {model_name}; pass --sha256 or --no-verify-hash")
        verify(local, digest, progress)
    else:
        digest = sha256_file(local, progress)
    model_dir.mkdir(parents=True, exist_ok=True)
    if target.resolve() != local:
        target.unlink(missing_ok=True)
        target.symlink_to(local)
    return target, digest
