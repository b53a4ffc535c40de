"""`python -m client.bench`: the latency and WER benchmark (see client/bench/cli.py)."""

import sys

from client.bench.cli import main

sys.exit(main())
