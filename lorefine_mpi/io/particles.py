"""The in-memory particle table: every particle's pose, CTF and image location, in internal units.

`io/star.py` turns RELION STAR files (3.0 and 3.1) into a `ParticleTable` and back. Inside lorefine
angles are radians (or 3 × 3 matrices), origins are pixels, defocus is Å. The raw STAR columns are
kept (as strings, in order) so that a file written back keeps every column, including the ones
lorefine does not use.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class OpticsGroup:
    """One row of RELION's data_optics table, in internal units."""

    number: int  # rlnOpticsGroup (1-based)
    name: str  # rlnOpticsGroupName
    pixel_size_angstrom: float  # rlnImagePixelSize
    image_size_px: int  # rlnImageSize (0 when the STAR file does not say)
    voltage_kv: float  # rlnVoltage
    cs_mm: float  # rlnSphericalAberration
    amplitude_contrast: float  # rlnAmplitudeContrast


@dataclasses.dataclass
class ParticleTable:
    """n particles. Arrays are float64 unless said otherwise; row i is particle i.

    rot_rad, tilt_rad, psi_rad: (n,) RELION Euler angles, radians.
    origin_px: (n, 2) RELION origin (x, y) in pixels (rlnOriginXAngst / pixel size).
    defocus_u_angstrom, defocus_v_angstrom: (n,) Å, positive = underfocus (0 when absent).
    defocus_angle_rad: (n,) astigmatism angle, radians.
    phase_shift_rad: (n,) radians. ctf_bfactor_angstrom2: (n,) Å². ctf_scale: (n,) (1 when absent).
    optics_group: (n,) int, 1-based number into `optics`.
    random_subset: (n,) int, rlnRandomSubset (1 or 2), 0 when the file has none.
    image_index: (n,) int, 0-based index into the stack.
    stack_path: (n,) object array of str, absolute paths of the MRC stacks.
    image_name: (n,) object array of str, rlnImageName as written in the file.
    has_ctf: True when the file carries rlnDefocusU.
    columns, rows: the particle table exactly as read (names without the leading underscore,
        values as strings) so that writing keeps every column in order.
    optics_columns, optics_rows: the same for data_optics (empty for STAR 3.0).
    source: path of the STAR file it came from.
    project_dir: absolute path of the folder its relative image names were resolved against.
    """

    rot_rad: np.ndarray
    tilt_rad: np.ndarray
    psi_rad: np.ndarray
    origin_px: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_rad: np.ndarray
    phase_shift_rad: np.ndarray
    ctf_bfactor_angstrom2: np.ndarray
    ctf_scale: np.ndarray
    optics_group: np.ndarray
    random_subset: np.ndarray
    image_index: np.ndarray
    stack_path: np.ndarray
    image_name: np.ndarray
    optics: dict[int, OpticsGroup]
    has_ctf: bool
    columns: list[str]
    rows: list[list[str]]
    optics_columns: list[str] = dataclasses.field(default_factory=list)
    optics_rows: list[list[str]] = dataclasses.field(default_factory=list)
    source: str = ""
    project_dir: str = ""

    def __len__(self) -> int:
        return len(self.rot_rad)

    @property
    def matrices(self) -> np.ndarray:
        """(n, 3, 3) float64 pose matrices A of the Euler angles (`geometry.rotations`, RELION's convention)."""
        from lorefine_mpi.geometry.rotations import euler_to_matrix

        return euler_to_matrix(self.rot_rad, self.tilt_rad, self.psi_rad)

    def pixel_size_angstrom(self) -> np.ndarray:
        """(n,) pixel size of each particle's optics group, Å."""
        lookup = {k: g.pixel_size_angstrom for k, g in self.optics.items()}
        return np.array([lookup[int(k)] for k in self.optics_group], dtype=np.float64)

    def subset(self, index) -> "ParticleTable":
        """The particles at ``index`` (int array or boolean mask), a new table."""
        idx = np.arange(len(self))[index]
        picked = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray) and value.shape[:1] == (len(self),):
                picked[field.name] = value[idx]
        picked["rows"] = [self.rows[i] for i in idx]
        return dataclasses.replace(self, **picked)
