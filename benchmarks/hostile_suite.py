"""The hostile suite of issue 30, every case (the slow ones too), counted per class of defence.

    python benchmarks/hostile_suite.py [-k EXPRESSION] [--keep-xml FILE]

Runs tests/integration/test_hostile_{outputs,inputs,resume}.py under pytest (``-m ""``: the cases marked slow, which
need a live run, included) and prints, per class, how many cases held (the defence worked: refused in one line with
status 2 and nothing written, or warned where that is the contract) and how many failed, then the total. A case is
one test instance (a parametrized test counts once per parameter set); its class is the prefix of its test's name:

    output        test_output_*     one output policy for every subcommand (io/files.py)
    cost          test_cost_*       resource bombs: memory and work bounded before allocation (refine/cost.py)
    plausibility  test_plausible_*  physically absurd but finite inputs (refine/preflight.py)
    damaged       test_damaged_*    damaged files, any index, any locale (io/mrc.py, io/star.py, cli/main.py)
    resume        test_resume_*     --continue with changed data; a vanished checkpoint or folder (io/results.py)

Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "tests" / "integration" / f"test_hostile_{name}.py" for name in ("outputs", "inputs", "resume")]
CLASSES = {"test_output_": "output", "test_cost_": "cost", "test_plausible_": "plausibility", "test_damaged_": "damaged", "test_resume_": "resume"}


def class_of(name: str) -> str:
    return next((label for prefix, label in CLASSES.items() if name.startswith(prefix)), "other")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="expression", help="only the cases pytest -k selects")
    parser.add_argument("--keep-xml", type=Path, help="keep pytest's JUnit XML report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = args.keep_xml or Path(folder) / "hostile.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", f"--junitxml={report}", *map(str, FILES)]
        if args.expression:
            command += ["-k", args.expression]
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.time() - started
        if not report.exists():
            sys.stdout.write(done.stdout[-5000:] + done.stderr[-5000:])
            return 1
        counts: dict[str, dict[str, int]] = {}
        failures = []
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            label = class_of(case.get("name", ""))
            row = counts.setdefault(label, {"held": 0, "failed": 0, "skipped": 0})
            if case.find("failure") is not None or case.find("error") is not None:
                row["failed"] += 1
                failures.append(f"{case.get('classname')}::{case.get('name')}")
            elif case.find("skipped") is not None:
                row["skipped"] += 1
            else:
                row["held"] += 1
    print(f"{'class':<14}{'held':>6}{'failed':>8}{'skipped':>9}")
    order = list(CLASSES.values()) + ["other"]
    for label in sorted(counts, key=order.index):
        row = counts[label]
        print(f"{label:<14}{row['held']:>6}{row['failed']:>8}{row['skipped']:>9}")
    total = {k: sum(row[k] for row in counts.values()) for k in ("held", "failed", "skipped")}
    print(f"{'total':<14}{total['held']:>6}{total['failed']:>8}{total['skipped']:>9}   "
          f"({sum(total.values())} cases, {seconds:.0f} s)")
    for name in failures:
        print(f"FAILED {name}")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
