"""Call-protocol test setup.

The suite runs with ``--import-mode=importlib``, which does not put test directories on ``sys.path``; this
directory is added so its test modules can share ``call_helpers`` (a uniquely named, non-test module).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
