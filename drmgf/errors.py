"""Exceptions for problems the user can fix (bad flags, missing files, corrupt data)."""

from __future__ import annotations


class UserError(Exception):
    """An expected error: the message names what was wrong and what to do.

    The CLI prints the message as one line on stderr and exits with status 1.
    """


class ConfigError(UserError):
    """A flag or configuration value is invalid (CLI exit status 2)."""


class DataError(UserError):
    """A dataset is missing, unreadable or in the wrong format."""
