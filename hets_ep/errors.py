"""Errors the command line reports as one line (no traceback)."""


class HetsEpError(Exception):
    """Base class: a problem the user can fix, stated in the message."""


class ConfigError(HetsEpError, ValueError):
    """An impossible or inconsistent configuration value."""


class DataError(HetsEpError):
    """A dataset file is missing, corrupt or cannot be fetched."""
