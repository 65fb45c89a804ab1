"""Writing benchmark results into `benchmarks/RESULTS.md`: one marked section per benchmark."""
from __future__ import annotations

from pathlib import Path


def write_results(path: Path, text: str, start: str, end: str) -> None:
    """Replace the section of `path` between the `start` and `end` markers with `text` (or append it)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{start}\n{text}{end}\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)  # atomic: an interrupted run leaves the old file whole
