"""`make bench-triton`: the same CPU model in-process and behind Triton, side by side in one benchmark run.

Starts Triton (the CPU build bundled in nvidia-pytriton) with `model_repository/`, one websocket server on the
in-process CTranslate2 engine and one on the Triton engine, all on free 127.0.0.1 ports, then runs
`client.bench` against both (servers alternate at each concurrency); its ratio table answers "what does the
Triton path cost?" (goal: end-of-speech -> final latency p50/p95 within 1.15x of in-process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.bench import cli as bench
from client.kit.local_server import LocalServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.bench.triton", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--out", type=Path, default=Path("bench-results/triton"))
    args, rest = parser.parse_known_args(argv)
    from triton_launcher import Ports, TritonServer

    args.out.mkdir(parents=True, exist_ok=True)
    with TritonServer(ports=Ports.free(), log_path=args.out / "tritonserver.log") as triton:
        with (
            LocalServer(log=args.out / "server-inprocess.log") as cpu,
            LocalServer(
                "--engine", "triton", "--triton-url", triton.grpc_url, log=args.out / "server-triton.log"
            ) as via_triton,
        ):
            return bench.main([
                "--url", cpu.url, "--label", "in-process",
                "--url", via_triton.url, "--label", "triton",
                "--concurrency", args.concurrency, "--out", str(args.out), *rest,
            ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
