"""Exceptions. Every user-facing failure is a :class:`PixelNNError` with a one-line message."""

import unicodedata


class PixelNNError(Exception):
    """A problem with the user's input or files; the CLI prints it as one line and exits non-zero."""


class BadImageError(PixelNNError):
    """An image that cannot be used (unreadable, corrupt, too small, too large...)."""


def printable(text: object) -> str:
    """``text`` with its control characters (newlines, tabs, terminal escapes) written as escapes (``\\n``,
    ``\\x1b``): a file name or message that prints as one line and cannot move the terminal's cursor."""
    s = str(text)
    if not any(unicodedata.category(c) == "Cc" for c in s):
        return s
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c for c in s)
