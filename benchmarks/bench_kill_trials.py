"""Kill and stop trials: ``mpiexec -n R lorefine refine`` (R random, 1–3), a random rank killed (SIGKILL) or
stopped (SIGSTOP) after a random number of finished work units, then ``--continue`` on a random number of
ranks (lorefine alone, without MPI, or mpiexec -n 1–3); the result must equal an uninterrupted run bitwise
(poses and maps), every particle exactly once, and a stopped rank must end the job within the stall
timeout (LOREFINE_STALL_TIMEOUT_S) plus a margin.

    python benchmarks/bench_kill_trials.py [--trials 10] [--timeout 5] [--seed 0]

A stopped rank can only be noticed by another rank, so SIGSTOP trials start at least 2 ranks (one stopped
process is ended by the scheduler's time limit). A killed rank ends the job through mpiexec at once.
"""

import argparse
import random
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mpi"))
from mpi_jobs import interrupt_and_resume, make_run, run  # noqa: E402

MARGIN_S = 3.0  # the watchdog's poll, a later rank's extra wait for rank 0 and the abort's spread


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--timeout", type=float, default=5.0, help="the stall timeout given to the runs (s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lorefine_kill_"))
    reference = make_run(work / "reference")
    assert run(0, "refine", str(reference / "config.yaml")).returncode == 0
    tally = {"equal": 0, "different": 0, "landed": 0, "late": 0}
    longest_stop = 0.0
    for trial in range(args.trials):
        how = rng.choice([signal.SIGKILL, signal.SIGSTOP])
        ranks = rng.choice([2, 3]) if how == signal.SIGSTOP else rng.choice([1, 2, 3])
        after = rng.choice([0, 1, 2, 3])
        victim = rng.randrange(ranks)
        what = f"trial {trial}: {how.name} of rank {victim} of {ranks}, resumed on {after or 'no MPI'}"
        try:
            outcome = interrupt_and_resume(reference, make_run(work / f"trial{trial}"), victim, seed=rng.randrange(1000), ranks=ranks,
                                           resume_ranks=after, how=how, stall_timeout_s=args.timeout)
        except AssertionError as error:
            tally["different"] += 1
            print(f"{what}: FAILED: {str(error)[:300]}", flush=True)
            continue
        tally["equal"] += 1
        tally["landed"] += outcome["landed"]
        ended = outcome["ended_s"]
        if how == signal.SIGSTOP and outcome["landed"]:
            longest_stop = max(longest_stop, ended)
            tally["late"] += ended > args.timeout + MARGIN_S
        where = "mid-run" if outcome["landed"] else "after the job had ended"
        print(f"{what}: sent {where}, job ended {ended:.1f} s later with status {outcome['status']}; resumed result equal", flush=True)
    print(f"{args.trials} trials: {tally['equal']} equal to the uninterrupted run, {tally['different']} different, "
          f"{tally['landed']} signals landed mid-run; stopped ranks ended their job at most {longest_stop:.1f} s after the stop "
          f"(timeout {args.timeout:g} s), {tally['late']} later than timeout + {MARGIN_S:g} s")
    return 0 if tally["different"] == 0 and tally["late"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
