"""Shared test settings.

The reference facts (checkpoint key lists, published tables) live in `shared/reference/` beside the
repository checkout (`<repo>/../shared/reference`), where CI also puts them; `$DPMS_REFERENCE`
overrides the location. Tests that need them skip when the folder is absent, except in CI (CI=true),
where they run and fail.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("DPMS_REFERENCE", REPO.parent / "shared" / "reference"))
