"""Small helpers shared by the components."""

from __future__ import annotations


def rejected(component: object, exc: Exception) -> Exception:
    """``exc``, with ``component`` marked used: a constructor that raises leaves no unused design."""
    component._MustUse__used = True  # type: ignore[attr-defined]  # amaranth's MustUse flag
    return exc
