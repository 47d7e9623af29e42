"""`python -m simulations SCENARIO --nodes N --seed S ...` (from the repository root)."""

import sys

from simulations.cli import main

sys.exit(main())
