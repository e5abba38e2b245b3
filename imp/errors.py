"""The one exception type for errors a user can cause.

The CLI turns an `ImpError` into one line on stderr and exit code 2. Internal invariant
failures stay ordinary assertions and exceptions, with tracebacks.
"""

import difflib


class ImpError(Exception):
    """A mistake in a user's configuration, data or command line; the message names the culprit."""

    def __init__(self, message: str):
        super().__init__(message)
        # Kept apart from str(): gin re-raises exceptions as proxies whose str() gains lines.
        self.message = message


def did_you_mean(name: str, options) -> str:
    """'; did you mean a, b?' for the options closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, sorted(set(options)), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""
