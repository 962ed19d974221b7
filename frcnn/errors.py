"""The project's user-facing errors: mistakes in a config, an input or a file that the user can fix.

The entry points (``scripts/*`` through :func:`frcnn.cli.friendly_errors`) print a :class:`UserError`
as one line, ``error: <message>``, and exit with status 2. Any other exception is a bug in frcnn or
in a library and keeps its traceback, so raise these classes only with a message that names what
is wrong (the key, file or id) and how to fix it.

Each class also derives from the built-in exception that code catching the old behaviour expects
(``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user what to fix."""


class ConfigError(UserError, ValueError):
    """A config value is of the wrong kind or out of range; the message names the key and the allowed values."""


class InputError(UserError, ValueError):
    """Data handed to a public function (images, targets, detection results) breaks its documented contract."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""
