"""Errors in user input, collected so one run reports all of them."""

from __future__ import annotations


class InventoryError(Exception):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid inventory {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("No host was contacted. Fix the fields above and run again.")
        return "\n".join(lines)
