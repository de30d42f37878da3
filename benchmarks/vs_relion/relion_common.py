"""What the RELION side-by-side scripts share: running a RELION MPI job while sampling every rank's CPU time
from /proc, and turning multi-body body poses into per-module particle poses (shared/notes/relion-multibody.md).
"""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.star import parse_star

MPIRUN = ["/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3"]


def say(command, cwd):
    print(f"$ (cd {cwd} && {shlex.join(str(c) for c in command)})", flush=True)


def process_cpu_seconds(pids):
    """User + system CPU seconds of the given processes so far (those that have ended count 0)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total


def descendants(pid):
    out = []
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int(Path(child, "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(child.name))
        except (FileNotFoundError, ValueError, IndexError):
            pass
    return out + [d for c in out for d in descendants(c)]


def run_until(command, cwd, done, log_path, cpu_log=None, stage="", every_s=60.0):
    """Run until ``done()`` is true (then stop the job) or it exits; its CPU seconds, summed over every
    process of the job, sampled from /proc every few seconds. With ``cpu_log`` (a path), a line is appended
    every ``every_s`` seconds and at the end: ISO time, stage, wall seconds, CPU seconds so far, pid:CPU s of
    every process seen. Returns (CPU seconds, exit status or None when stopped)."""
    say(command, cwd)
    started = time.time()
    seen = {}

    def sample():
        for pid in [job.pid] + descendants(job.pid):
            seen[pid] = max(seen.get(pid, 0.0), process_cpu_seconds([pid]))

    def write_line():
        if cpu_log:
            with open(cpu_log, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\t{stage}\t{time.time() - started:.0f}\t{sum(seen.values()):.1f}\t"
                        + ",".join(f"{pid}:{cpu:.1f}" for pid, cpu in sorted(seen.items())) + "\n")

    with open(log_path, "a") as log:
        job = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        last = time.time()
        while job.poll() is None and not done():
            sample()
            if time.time() - last >= every_s:
                write_line()
                last = time.time()
            time.sleep(5)
        status = job.poll()
        if status is None:
            time.sleep(20)  # let the iteration's files be written completely
            sample()
            os.killpg(job.pid, signal.SIGTERM)
            job.wait()
    write_line()
    return sum(seen.values()), status


def align_with_z(axis):
    """RELION's alignWithZ: the rotation taking the unit vector ``axis`` to z."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    proj = np.hypot(y, z)
    if proj < 1e-6:
        return np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return np.array([[proj, -x * y / proj, -x * z / proj], [0.0, z / proj, -y / proj], [x, y, z]])


def star_poses(blocks, block, voxel):
    """(n, 3, 3) pose matrices and (n, 2) origins (px) of one block of a parsed RELION data STAR file."""
    columns, rows = blocks[block]
    get = lambda name: np.array([float(r[columns.index(name)]) for r in rows])  # noqa: E731
    matrices = rotations.euler_to_matrix(*(np.deg2rad(get(c)) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    return matrices, np.stack([get("rlnOriginXAngst"), get("rlnOriginYAngst")], -1) / voxel


def body_module_poses(data_star, mask_coms_px, rotate_relative_to, voxel):
    """Each body's poses in a multi-body ``run_*_data.star`` as full particle poses, following ml_optimiser.cpp
    (3.1.3): A_body = A Oᵀ R Aresi O, o_body = ROUND(o − (A com)_xy) + s_body + (A_body com)_xy, with com the
    body mask's centre of mass rounded to whole px, O the rotation aligning −(com_other − com) with z (other =
    the body it rotates relative to), R = Ry(−90°) (shared/notes/relion-multibody.md).

    mask_coms_px: (K, 3) xyz px from the box centre (unrounded); rotate_relative_to: K 0-based body indices.
    Returns a list of K (matrices (n, 3, 3), origins (n, 2) px).
    """
    blocks = parse_star(data_star)
    a, origin = star_poses(blocks, "particles", voxel)  # the poses the bodies move from (the run's own)
    coms = [np.rint(c) for c in mask_coms_px]
    r = rotations.euler_to_matrix(0.0, np.deg2rad(-90.0), 0.0)
    poses = []
    for k, other in enumerate(rotate_relative_to):
        a_resi, s_body = star_poses(blocks, f"images_body_{k + 1}", voxel)
        o_align = align_with_z(-(coms[other] - coms[k]))
        a_body = a @ o_align.T @ r @ a_resi @ o_align
        o_body = np.rint(origin - np.einsum("nij,j->ni", a, coms[k])[:, :2]) + s_body + np.einsum("nij,j->ni", a_body, coms[k])[:, :2]
        poses.append((a_body, o_body))
    return poses
