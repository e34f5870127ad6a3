"""Loading entries: the built-in ones, then third-party plug-ins, once, on the first lookup.

``import irblocks`` registers a loader that imports its built-in block files
(:func:`add_builtin_loader`); plug-ins are entry points of group
``irblocks.plugins``. Both run lazily, so importing the library stays light.
"""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Callable

__all__ = ["add_builtin_loader", "ensure_loaded", "load_plugins"]

_BUILTIN_LOADERS: list[Callable[[], None]] = []
_BUILTINS_LOADED = False
_PLUGINS_LOADED = False


def add_builtin_loader(fn: Callable[[], None]) -> None:
    """Run ``fn`` (which imports files that register entries) before the first lookup."""
    global _BUILTINS_LOADED
    if fn not in _BUILTIN_LOADERS:
        _BUILTIN_LOADERS.append(fn)
        _BUILTINS_LOADED = False


def ensure_loaded() -> None:
    """Built-in entries, then plug-ins (each once)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True          # set first: the loaders' own lookups must not recurse
        try:
            for fn in list(_BUILTIN_LOADERS):
                fn()
        except BaseException:
            _BUILTINS_LOADED = False
            raise
    load_plugins()


def load_plugins(force: bool = False) -> list[str]:
    """Load entry points of group ``irblocks.plugins`` once (lazily on first lookup).

    A plug-in entry point names a module (imported: its decorators register)
    or a callable (called with no arguments). A plug-in that fails becomes a
    warning naming it. ``IRBLOCKS_NO_PLUGINS=1`` turns autoloading off.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    if os.environ.get("IRBLOCKS_NO_PLUGINS", "") not in ("", "0") and not force:
        return []
    from importlib.metadata import entry_points
    loaded = []
    for ep in entry_points(group="irblocks.plugins"):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
            loaded.append(ep.name)
        except Exception as e:  # a broken plug-in must not break the library
            warnings.warn(f"irblocks plug-in {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return loaded
