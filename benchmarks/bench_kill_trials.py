"""Kill trials: `mpiexec -n 3 lorefine refine`, SIGKILL a random rank (worker or master) at a random moment,
then `--continue`; the result must equal an uninterrupted run, every particle exactly once.

    python benchmarks/bench_kill_trials.py [--trials 10]
"""

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mpi"))
from mpi_jobs import kill_and_resume, make_run, run  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorefine_kill_"))
    reference = make_run(work / "reference")
    assert run(3, "refine", str(reference / "config.yaml")).returncode == 0
    tally = {"equal": 0, "different": 0, "killed mid-run": 0}
    for trial in range(args.trials):
        victim = random.Random(trial).choice([0, 1, 2])
        try:
            killed = kill_and_resume(reference, make_run(work / f"trial{trial}"), victim, seed=100 + trial)
            tally["equal"] += 1
            tally["killed mid-run"] += killed
            print(f"trial {trial}: killed rank {victim} {'mid-run' if killed else '(job had already ended)'}; resumed result equal")
        except AssertionError as error:
            tally["different"] += 1
            print(f"trial {trial}: killed rank {victim}; FAILED: {str(error)[:200]}")
    print(f"{args.trials} trials: {tally['equal']} equal to the uninterrupted run, {tally['different']} different, "
          f"{tally['killed mid-run']} kills landed mid-run")
    return 0 if tally["different"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
