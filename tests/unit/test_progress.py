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
