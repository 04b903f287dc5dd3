"""Data shipped inside the package: outcomes for the demo's replay fleet and the default router.

Usage::

    path = shipped_path("outcomes/routerbench_zs.test.jsonl.gz")
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_path(relative: str) -> Path:
    """The filesystem path of a file shipped in ``wattwise/data``."""
    return Path(str(files("wattwise.data").joinpath(relative)))


def resolve(path: str, *, base_dir: str | Path = ".") -> Path:
    """``builtin:NAME`` names a shipped file; anything else is relative to ``base_dir``."""
    if path.startswith("builtin:"):
        return shipped_path(path.removeprefix("builtin:"))
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(base_dir) / candidate
