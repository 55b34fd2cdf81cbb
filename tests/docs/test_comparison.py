"""The comparison page's figures are the published benchmark run's.

Every figure in the "Measured" table of docs/comparison.md must appear in
benchmarks/results/latest.md (at the precision shown), and every ratio must
be the quotient of the figures in its row. When the benchmarks are run and
published again, this fails until the page is updated with the new figures.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "comparison.md"
RESULTS = ROOT / "benchmarks" / "results" / "latest.md"
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def measured_rows(page: str) -> list[list[str]]:
    section = page.split("## Measured", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    return rows[1:]  # without the header


def first_number(cell: str) -> str | None:
    match = NUMBER.search(cell.replace("*", ""))
    return None if match is None else match.group().replace(",", "")


def published(results: str) -> set[float]:
    return {float(n.replace(",", "")) for n in NUMBER.findall(results)}


def appears(figure: str, numbers: set[float]) -> bool:
    """Whether a published number rounds to `figure` at its precision."""
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    value = float(figure)
    return any(round(n, decimals) == value for n in numbers)


def problems(page: str, results: str) -> list[str]:
    numbers = published(results)
    found: list[str] = []
    rows = measured_rows(page)
    if not rows:
        return ["no Measured table"]
    for row in rows:
        name, figures, ratios = row[0], row[1:4], row[4:6]
        values = [first_number(cell) for cell in figures]
        for cell, value in zip(figures, values, strict=True):
            if value is not None and not appears(value, numbers):
                found.append(f"{name}: {cell!r} is not in the published results")
        for other, cell in zip((values[1], values[2]), ratios, strict=True):
            ratio = first_number(cell)
            if ratio is None or other is None or values[0] is None:
                continue
            expected = float(values[0]) / float(other)
            if abs(expected - float(ratio)) > 0.006 + 0.01 * expected:
                found.append(f"{name}: ratio {cell!r}, the figures give {expected:.3f}")
    return found


def test_comparison_figures_are_the_published_ones() -> None:
    assert problems(PAGE.read_text(), RESULTS.read_text()) == []


def test_the_check_catches_a_stale_figure_and_a_wrong_ratio() -> None:
    page = PAGE.read_text()
    row = "| 10,000 local interval tasks: CPU s per s |"
    first = next(line for line in page.splitlines() if line.startswith(row))
    cells = [cell.strip() for cell in first.strip("|").split("|")]
    figure, ratio = cells[1], cells[4]
    stale = page.replace(first, first.replace(f"| {figure} |", "| 9.999 |", 1), 1)
    assert stale != page
    assert any("9.999" in p for p in problems(stale, RESULTS.read_text()))
    wrong = page.replace(first, first.replace(ratio, "**7.77x**", 1), 1)
    assert wrong != page
    assert any("ratio" in p for p in problems(wrong, RESULTS.read_text()))
