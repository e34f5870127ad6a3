"""Registry errors. ``str(err)`` is one line naming the path, the value and what was expected."""
from __future__ import annotations

__all__ = ["RegistryError", "UnknownNameError", "WrongKindError", "DuplicateError", "ConfigError"]


class RegistryError(LookupError):
    """Base class of registry errors. ``str(err)`` is one line."""


class UnknownNameError(RegistryError):
    pass


class WrongKindError(RegistryError):
    pass


class DuplicateError(RegistryError):
    pass


class ConfigError(ValueError):
    """A wrong argument: names the path and what was expected, on one line."""
