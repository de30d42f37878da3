"""Progress lines: a fixed cadence, the rate and the ETA."""

from lorefine_mpi.refine.progress import ProgressLog, duration


def test_progress_lines_carry_rate_and_eta_at_a_fixed_cadence():
    now, lines = [0.0], []
    progress = ProgressLog("iteration_01/large: search", 1000, every_s=30, clock=lambda: now[0], emit=lines.append)
    for _ in range(9):  # 100 particles every 10 s: a line every third unit
        now[0] += 10
        progress.add(100)
    assert lines == [
        "iteration_01/large: search: 300/1000 particles (30%), 10.0 particles/s, ETA 1m10s",
        "iteration_01/large: search: 600/1000 particles (60%), 10.0 particles/s, ETA 40s",
        "iteration_01/large: search: 900/1000 particles (90%), 10.0 particles/s, ETA 10s",
    ]
    now[0] += 1
    progress.add(100)
    assert lines[-1] == "iteration_01/large: search: 1000/1000 particles (100%), 11.0 particles/s, done in 1m31s"


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600, 7505)] == ["0s", "59s", "1m01s", "59m59s", "1h00m", "2h05m"]


def test_the_whole_run_has_an_eta_after_every_module_stage():
    from lorefine_mpi.refine.progress import RunProgress

    now, lines = [100.0], []
    run = RunProgress(4, clock=lambda: now[0], emit=lines.append)  # two iterations of two modules
    for name in ("iteration_01/large", "iteration_01/small", "iteration_02/large", "iteration_02/small"):
        run.stage_started(name)
        now[0] += 30
        run.stage_done(name)
    assert lines == [
        "run: 1/4 module stages done in 30s (this attempt); ETA 1m30s for the other 3, then the end-of-run analysis",
        "run: 2/4 module stages done in 1m00s (this attempt); ETA 1m00s for the other 2, then the end-of-run analysis",
        "run: 3/4 module stages done in 1m30s (this attempt); ETA 30s for the other 1, then the end-of-run analysis",
        "run: 4/4 module stages done in 2m00s (this attempt); next: the end-of-run analysis",
    ]
