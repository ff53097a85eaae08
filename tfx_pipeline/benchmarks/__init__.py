"""Benchmark modules that `idpt bench` runs, and the BENCHMARKS.md writer.

A benchmark is any module in this package whose name ends in `_bench` and that
defines `run(output_dir: str, quick: bool) -> dict[str, object]`, returning its
figures by name. An optional module constant TITLE names its section, and NOTES
(Markdown) describes what it measures. Add a module and `idpt bench` picks it up.

BENCHMARKS.md keeps one section per module and size between `<!-- bench:KEY -->` and
`<!-- /bench:KEY -->` markers, where KEY is NAME for the full sizes and NAME:quick for
--quick. A run replaces the sections of the modules and size it ran and leaves the others
as they were, so a quick run never overwrites full-size figures.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import pkgutil
import platform
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

# Progress lines of the benchmarks. `idpt bench` shows this logger's INFO lines without
# turning on the INFO lines of TFX and Beam.
LOGGER = logging.getLogger("idpt.bench")

_SUFFIX = "_bench"
_HEADER = (
    "# Benchmarks\n\n"
    "Figures written by `idpt bench` (`make bench`); each section names its machine.\n"
)


def discover() -> list[str]:
    """Return the names of the benchmark modules in this package, sorted."""
    names = [module.name for module in pkgutil.iter_modules(__path__)]
    return sorted(name for name in names if name.endswith(_SUFFIX))


def run_all(output_dir: str, quick: bool, only: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Run benchmark modules and return module name -> figures.

    Args:
      output_dir: folder for the benchmarks' generated data; each module gets a subfolder.
      quick: run small sizes only.
      only: module names to run; empty runs all.

    Raises:
      ValueError: a name in `only` is not a benchmark module.
    """
    names = discover()
    selected = list(only) or names
    unknown = sorted(set(selected) - set(names))
    if unknown:
        raise ValueError(f"unknown benchmark modules {unknown}: available are {names}.")
    results = {}
    for number, name in enumerate(selected, start=1):
        LOGGER.info("Benchmark %d of %d: %s started.", number, len(selected), name)
        start = time.perf_counter()
        module = importlib.import_module(f"{__name__}.{name}")
        folder = os.path.join(os.path.abspath(output_dir), "bench", name)
        os.makedirs(folder, exist_ok=True)
        results[name] = module.run(folder, quick)
        LOGGER.info("Benchmark %s finished in %.0f s.", name, time.perf_counter() - start)
    return results


def write_markdown(results: Mapping[str, Mapping[str, Any]], path: str, quick: bool) -> list[str]:
    """Write or update `path` with one section per module in `results`.

    Returns:
      The sections written, as Markdown.
    """
    text = _HEADER
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            text = file.read()

    sections = []
    for name, figures in results.items():
        marker = f"{name}:quick" if quick else name
        section = _section(marker, name, figures, quick)
        pattern = re.compile(rf"<!-- bench:{marker} -->.*?<!-- /bench:{marker} -->\n", re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _, new=section: new, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        sections.append(section)

    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return sections


def _section(marker: str, name: str, figures: Mapping[str, Any], quick: bool) -> str:
    module = importlib.import_module(f"{__name__}.{name}")
    title = getattr(module, "TITLE", name)
    notes = getattr(module, "NOTES", "").strip()
    machine = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    date = datetime.date.today().isoformat()
    lines = [f"<!-- bench:{marker} -->", f"## {title}{', quick sizes' if quick else ''}", ""]
    if notes:
        lines += [notes, ""]
    lines += [f"Measured {date} on {machine}{' (--quick)' if quick else ''}.", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {key} | {_format(value)} |" for key, value in figures.items()]
    lines += [f"<!-- /bench:{marker} -->", ""]
    return "\n".join(lines)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
