"""Compare a rebuilt report with a committed one, with tolerances another BLAS or CPU cannot break and a real
change still fails.

- JSON and tables: floats within REL (relative to the larger magnitude; ABS near zero), everything else equal.
  A JSON object that says `"identified": false` is a fit the report declares not identified: it sits on a flat
  optimum, so its numbers and the reason it gives (which parameter is loosest) move with the last bits of the
  arithmetic; only its keys and the flag itself are compared.
- report.md: the text between numbers equal; each number within REL or one unit of its last printed digit (a value
  on a rounding boundary prints either way; the JSON holds it to REL). A line that says "not identified" is
  compared up to those words; a section (from one `## ` heading to the next) that says it has its numbers left
  alone.
- Figures: the numbers each one draws (harness.plots.drawn_data, saved inside the PNG and SVG), as JSON.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

REL, ABS = 1e-6, 1e-12
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
from studies.isoflop import NOT_IDENTIFIED  # the words a report marks an unidentified fit with


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= REL * max(abs(a), abs(b)) + ABS


def compare_json(committed, rebuilt, where: str) -> list[str]:
    if isinstance(committed, dict) and isinstance(rebuilt, dict):
        if committed.keys() != rebuilt.keys():
            return [f"{where}: keys {sorted(committed)} != {sorted(rebuilt)}"]
        if committed.get("identified") is False and rebuilt.get("identified") is False:
            committed, rebuilt = _without_numbers(committed), _without_numbers(rebuilt)
        problems = []
        for key in committed:
            problems += compare_json(committed[key], rebuilt[key], f"{where}.{key}")
        return problems
    if isinstance(committed, list) and isinstance(rebuilt, list):
        if len(committed) != len(rebuilt):
            return [f"{where}: {len(committed)} items != {len(rebuilt)}"]
        return [p for i, (a, b) in enumerate(zip(committed, rebuilt)) for p in compare_json(a, b, f"{where}[{i}]")]
    numeric = (int, float)
    if isinstance(committed, numeric) and isinstance(rebuilt, numeric) and not isinstance(committed, bool):
        return [] if close(float(committed), float(rebuilt)) else [f"{where}: {committed!r} != {rebuilt!r}"]
    return [] if committed == rebuilt else [f"{where}: {committed!r} != {rebuilt!r}"]


def _without_numbers(value):
    """A value with its numbers and words masked (those of a result that is not identified): structure and flags stay."""
    if isinstance(value, dict):
        return {k: _without_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_numbers(v) for v in value]
    return value if isinstance(value, bool) or value is None else "#"


def compare_tables(committed: pd.DataFrame, rebuilt: pd.DataFrame, where: str) -> list[str]:
    if list(committed.columns) != list(rebuilt.columns) or len(committed) != len(rebuilt):
        return [f"{where}: columns or rows differ"]
    problems = []
    for column in committed.columns:
        for row, (a, b) in enumerate(zip(committed[column], rebuilt[column])):
            if pd.isna(a) and pd.isna(b):
                continue
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                ok = close(float(a), float(b))
            else:
                ok = a == b
            if not ok:
                problems.append(f"{where}[{row}, {column}]: {a!r} != {b!r}")
    return problems


def _last_digit(token: str) -> float:
    """The value of one unit in the last printed digit of a number as printed ("0.4845" -> 1e-4, "1.3e-12" -> 1e-13)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def _up_to_not_identified(line: str) -> str:
    """A line up to and including "not identified": what follows is the flat optimum's numbers and reason."""
    at = line.lower().find(NOT_IDENTIFIED)
    return line if at < 0 else line[:at + len(NOT_IDENTIFIED)]


def compare_markdown(committed: str, rebuilt: str) -> list[str]:
    problems = []
    for section_a, section_b in zip(committed.split("\n## "), rebuilt.split("\n## ")):
        skip_section = NOT_IDENTIFIED in section_a.lower() and NOT_IDENTIFIED in section_b.lower()
        lines_a, lines_b = section_a.splitlines(), section_b.splitlines()
        if len(lines_a) != len(lines_b):
            problems.append(f"report.md: a section has {len(lines_a)} lines, rebuilt {len(lines_b)}")
            continue
        for a, b in zip(lines_a, lines_b):
            a, b = _up_to_not_identified(a), _up_to_not_identified(b)
            if NUMBER.sub("#", a) != NUMBER.sub("#", b):
                problems.append(f"report.md: {a!r} != {b!r}")
            elif not (skip_section or NOT_IDENTIFIED in a.lower()):
                for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
                    if not (close(float(x), float(y)) or abs(float(x) - float(y)) <= min(_last_digit(x), _last_digit(y)) * 1.0001):
                        problems.append(f"report.md: {x} != {y} in {a!r}")
    if committed.count("\n## ") != rebuilt.count("\n## "):
        problems.append("report.md: the sections differ")
    return problems


def figure_data(path: Path):
    """What a figure draws, as harness.plots.save stored it: the SVG's <dc:description>, the PNG's text chunk."""
    from harness.plots import DATA_KEY
    if path.suffix == ".svg":
        found = re.search(r"<dc:description>(.*?)</dc:description>", path.read_text(), re.S)
        text = found.group(1) if found else "null"
        text = text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    else:
        from PIL import Image
        text = Image.open(path).text.get(DATA_KEY, "null")
    return json.loads(text)
