"""User-facing errors. A `DpmsError` message is one line that names the problem and the fix;
the CLI prints it without a traceback and exits with code 2."""

import re

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """`text` without terminal escape codes (torch's errors carry bold markers)."""
    return _ANSI_ESCAPE.sub("", text)


class DpmsError(Exception):
    """A problem with the user's input (unknown solver, impossible NFE, missing file, ...)."""


class MissingFileError(DpmsError, FileNotFoundError):
    """A checkpoint, statistics file or feature-network weight file is not where dpms looked."""


class NonFiniteError(DpmsError):
    """A sampling run produced NaN or ±inf (network output or samples): nothing of it may be written as a result.
    `dpms bench` records the cell as diverged and goes on; `dpms sample` writes nothing of the batch."""
