"""Figures a test run measures (times, counts), printed as they come and again in pytest's
closing summary: the numbers a closing note quotes."""

from __future__ import annotations

FIGURES: list[tuple[str, str]] = []


def record(label: str, value: str) -> None:
    FIGURES.append((label, value))
    print(f"[figure] {label}: {value}")
