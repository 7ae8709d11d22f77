"""Smoke check of bench.py: every row runs at a tiny size and lands in the report.

No timing is asserted; the figures of a shared test machine mean nothing.
"""

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent


def test_bench_quick_writes_every_row(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    completed = subprocess.run(
        [sys.executable, "bench.py", "--quick", "--out", str(out)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip() for line in table[2:]}
    assert rows == {str(row) for row in range(1, 8)}
    assert "## Machine" in out.read_text()
