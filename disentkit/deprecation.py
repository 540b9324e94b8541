"""Old keyword names that still work, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import warnings

UNSET = object()  # the default of an old keyword: "not given" (None is a value some keywords take)


def renamed(value, old_value, old: str, new: str, where: str):
    """``value`` (the keyword ``new``), or ``old_value`` with a DeprecationWarning when the caller still used the
    keyword's former name ``old`` (``old_value`` is :data:`UNSET` when they did not)."""
    if old_value is UNSET:
        return value
    warnings.warn(f"{where}({old}=...) is deprecated; call it {new}= (same meaning).", DeprecationWarning, stacklevel=3)
    return old_value
