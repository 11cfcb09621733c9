"""Quick benchmark (under a minute): direct HTTP against the fedmcp standard path.

Kept for muscle memory; the same as `scripts/bench/run.py --quick` (see there). Timings on shared
machines are noisy: this is for before/after comparisons of the hot path, never a CI gate.

    uv run python scripts/bench/quick.py [run.py options]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `scripts.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.bench.run import main

if __name__ == "__main__":
    main(["--quick", *sys.argv[1:]])
