#!/usr/bin/env python3
"""Copy benchmarks/quality/results.md into README.md between its markers."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- quality-results:start -->", "<!-- quality-results:end -->"

readme = (ROOT / "README.md").read_text()
table = (ROOT / "benchmarks" / "quality" / "results.md").read_text().strip()
head, rest = readme.split(START, 1)
_, tail = rest.split(END, 1)
(ROOT / "README.md").write_text(f"{head}{START}\n{table}\n{END}{tail}")
print("README.md updated from benchmarks/quality/results.md")
