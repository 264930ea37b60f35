"""Errors every layer shares, so the CLI and the agent catch one family.

Each message is meant to be shown as is: it names the object, what went
wrong, and, where there is one, what to do about it.
"""

from __future__ import annotations


class HwflowError(Exception):
    """Base of every user-facing hwflow failure."""


class ValidationError(HwflowError):
    """An object (or a stored record) breaks a rule of the model."""


class NotFound(HwflowError):
    """The named object is not in the database."""


class Ambiguous(HwflowError):
    """A name matches several objects; the caller must use an id."""


class BrokenReference(HwflowError):
    """A write would leave an object pointing at something that does not exist."""


class DatabaseUnavailable(HwflowError):
    """The database cannot be opened or reached."""


class AccessDenied(DatabaseUnavailable):
    """The database refused who we are or what we asked: a certificate, a user, a permission.

    A DatabaseUnavailable, since to whoever asked the database cannot do it; its
    message names the credential and the key, and what to change.
    """


def _describe(revision: int | None) -> str:
    if revision is None:
        return "any revision"
    if revision == 0:
        return "no stored object"
    return f"revision {revision}"


class Conflict(HwflowError):
    """A compare-and-swap failed: someone else wrote the object first.

    ``table``/``key`` say which record's revision did not match, so a caller
    that compared several records (a transaction) knows which one moved.
    """

    def __init__(self, table: str, key: str, expected: int | None, actual: int, hint: str = "") -> None:
        self.table = table
        self.key = key
        self.expected = expected
        self.actual = actual
        hint = hint or "it was changed by someone else; read it again and retry"
        super().__init__(
            f"conflict on {table} {key}: expected {_describe(expected)}, "
            f"found {_describe(actual)} ({hint})"
        )


class Compacted(HwflowError):
    """A watch asked for history the database no longer keeps; resync."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            f"changes up to revision {compact_revision} were compacted away; "
            "take a new snapshot and watch from its revision + 1"
        )
