"""What a bench run produces: figures (one value each, with how it was measured) and Markdown sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    how: str  # how it was measured
    goal: str = ""


@dataclass
class Section:
    """A table or text of its own (the side-by-side burst, the sustained load), printed after the figures."""

    title: str
    markdown: str


@dataclass
class BenchReport:
    started: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # per scenario: every measured value, for results.json

    def add(self, name: str, value: float, unit: str, how: str, goal: str = "") -> None:
        self.figures.append(Figure(name, value, unit, how, goal))
        print(f"  {name}: {value:,.3f} {unit}", flush=True)

    def markdown(self) -> str:
        lines = ["| figure | value | goal | how it was measured |", "|---|---:|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.value:,.2f} {f.unit} | {f.goal} | {f.how} |")
        for section in self.sections:
            lines += ["", f"### {section.title}", "", section.markdown]
        return "\n".join(lines)
