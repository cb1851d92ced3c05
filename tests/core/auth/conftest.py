"""Auth test setup.

- The hypothesis profiles of the auth property tests, used through ``settings.get_profile`` only (registered
  here, never loaded globally, so other test directories keep their own settings).
- The suite runs with ``--import-mode=importlib``, which does not put test directories on ``sys.path``; this
  directory is added so its test modules can share ``auth_helpers`` (a uniquely named, non-test module).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

_FUZZ_OPTIONS = {
    "deadline": 5000,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("alknet-auth-fuzz", max_examples=500, **_FUZZ_OPTIONS)
settings.register_profile("alknet-auth-fuzz-slow", max_examples=20_000, **_FUZZ_OPTIONS)
