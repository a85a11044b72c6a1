"""Figures: every check's result as a number with what it was expected to be.

WHY numbers rather than asserts inside the harness: the soak prints the same table the
test asserts on, and a failing test shows every figure at once (not only the first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    value: Any
    expect: str  # human-readable: "== 0", ">= 3 (drops applied)", "info"
    ok: bool = True
    note: str = ""


def exact(section: str, name: str, value: Any, want: Any, note: str = "") -> Figure:
    return Figure(section, name, value, f"== {want}", value == want, note)


def at_least(section: str, name: str, value: float, want: float, note: str = "") -> Figure:
    return Figure(section, name, value, f">= {want:g}", value >= want, note)


def at_most(section: str, name: str, value: float, want: float, note: str = "") -> Figure:
    return Figure(section, name, value, f"<= {want:g}", value <= want, note)


def info(section: str, name: str, value: Any, note: str = "") -> Figure:
    return Figure(section, name, value, "info", True, note)


def failures(figures: Iterable[Figure]) -> list[Figure]:
    return [f for f in figures if not f.ok]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def render(figures: Iterable[Figure], title: str = "chaos run") -> str:
    """A plain-text table grouped by section; failed rows are marked `FAIL`."""
    rows = list(figures)
    width = max((len(f.name) for f in rows), default=10)
    out = [f"== {title}: {len(rows)} figures, {len(failures(rows))} failed =="]
    section = None
    for f in rows:
        if f.section != section:
            section = f.section
            out.append(f"-- {section}")
        mark = "ok  " if f.ok else "FAIL"
        note = f"  ({f.note})" if f.note else ""
        out.append(f"  {mark} {f.name.ljust(width)}  {_fmt(f.value):>14}  {f.expect}{note}")
    return "\n".join(out)
