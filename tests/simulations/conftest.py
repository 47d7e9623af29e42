"""Make the repository root importable, so the tests can `import simulations`.

pytest runs with `--import-mode=importlib`, which leaves `sys.path` alone, and
the editable install maps only `meshnode`; `simulations/` is a source-tree
tool, never installed. (`pythonpath = ["."]` in pytest's config would do the same.)
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
