"""One error family: every error selfguide raises on purpose is a `SelfGuideError`.

Its message names the field (or flag) that is wrong and the fix, so the command line and the recipe turn
any of them into one `error: ...` line and a non-zero exit. Each class also subclasses the built-in error
a caller would expect (ValueError for bad input, FileNotFoundError for a missing path), so existing
`except ValueError` code keeps working.
"""

from __future__ import annotations


class SelfGuideError(Exception):
    """Base of the family; catch this to handle any of selfguide's own errors."""


class ConfigError(SelfGuideError, ValueError):
    """A knob, flag or argument has a value that cannot work; raised before any model work."""


class InputNotFoundError(SelfGuideError, FileNotFoundError):
    """A path the user gave (a model, a task, an adapter) does not exist or is not what it must be."""
