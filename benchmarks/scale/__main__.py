"""`python -m benchmarks.scale`: see the package docstring."""

import sys

from benchmarks.scale.cli import main

sys.exit(main())
