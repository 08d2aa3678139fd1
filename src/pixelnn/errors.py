"""Exceptions. Every user-facing failure is a :class:`PixelNNError` with a one-line message."""


class PixelNNError(Exception):
    """A problem with the user's input or files; the CLI prints it as one line and exits non-zero."""


class BadImageError(PixelNNError):
    """An image that cannot be used (unreadable, corrupt, too small, too large...)."""
