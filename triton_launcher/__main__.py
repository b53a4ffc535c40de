"""`python -m triton_launcher`: start Triton on model_repository/ and serve until Ctrl-C (see the package)."""

import sys

from triton_launcher import main

sys.exit(main())
