"""The toyworld model's quality: prompt following, the toy CLIP, speed, and the switch-step map, against the bars.

    python benchmarks/toyworld_report.py [--quick] [--model FOLDER] [--out DIR] [--parts ...] [--render JSON ...]

A thin command line: the measurements are `disentkit.reports.toyworld` (its docstring lists every option and
what each part measures).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from disentkit.reports.toyworld import main  # noqa: E402

if __name__ == "__main__":
    main()
