"""`python -m client.bench`: the latency and WER benchmark (see client/bench/runner.py)."""

import sys

from client.bench.runner import main

sys.exit(main())
