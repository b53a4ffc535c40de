"""The Truss that `make truss-push` pushes: truss/ copied with its bundle's packages as real files and the
chosen config as its only `config.yaml`.

truss 0.18 rebuilds a Truss that has `external_package_dirs` from its folder alone (`gather()`), which drops
`truss push --config` (the CPU variant went out with the GPU config) and reuses its cached copy while the
folder's newest file time is unchanged, which files behind the bundle's symlinks never move (edits to the
package were left out of later pushes). A fresh copy of real files, with one config, avoids both.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TRUSS_DIR = Path(__file__).resolve().parents[2] / "truss"
DEFAULT_OUT = TRUSS_DIR.parent / "build" / "truss"


def stage(config: str = "config.yaml", out: Path = DEFAULT_OUT, src: Path = TRUSS_DIR) -> Path:
    chosen = src / config
    if not chosen.is_file():
        configs = ", ".join(sorted(p.name for p in src.glob("config*.yaml")))
        raise SystemExit(f"no Truss config {chosen} (there are: {configs})")
    shutil.rmtree(out, ignore_errors=True)
    # symlinks followed, file times new: truss sees every file, and a changed package is never a cached copy
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "config*.yaml")
    shutil.copytree(src, out, symlinks=False, ignore=ignore, copy_function=shutil.copy)
    shutil.copy(chosen, out / "config.yaml")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m whisper_stream.serving.truss_stage", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", default="config.yaml", help="config.yaml (GPU) or config.cpu.yaml")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    print(stage(args.config, args.out))


if __name__ == "__main__":
    main()
