"""What a run of `lorefine refine` costs: CPU core-hours, wall time, and peak memory per rank and per node, as
functions of the run's shape (`RunShape`: particles, box, modules, iterations, ranks per node, nodes, search sizes),
from terms fitted on measured runs. Pure functions; `lorefine check` prints them (`summary_lines`) and
``lorefine check --slurm`` turns them into sbatch options (`slurm_request`). These are expectations, not bounds:
`refine.cost` owns the bounds a run is refused on.

Work: CPU seconds summed over the ranks, a sum of *components*, each a sum of terms ``coefficient × feature``.
Notation: N particles, b box (px), p padding, P = p·b, I iterations, M modules, S = I·M stages, C = 1 when the
consensus half maps are reconstructed (0 when given), q reconstruction.max_poses, E_m and E'_m the CCC evaluations per
particle of module m's search and of its prior's pilot (a flat-prior search of every candidate), both counted by
`refine.cost.evaluations`, J_m the pixels of module m's round 2D mask (the search's own, `refine.preflight`) on the
search's working grid (`mask_pixels`), D_m the directions of module m's grid (`refine.cost.grid_directions`), B_s the
search band (px), g gridding iterations, R ranks, n nodes.

    component        feature(s)                                   runs on
    search           N·I·M·b²,  N·I·Σ_m E_m·J_m,  I·Σ_m D_m·B_s²  every rank (work units handed out)
    prior pilot      I·Σ_m min(N, 300)·E'_m·J_m                   every rank (fixed units)
    band             S·min(N, 1000)·b²,  S·P³·log2 P              rank 0
    stage set-up     n·V·P³·log2 P   (V reference volumes)        the leader of each node (the others wait)
    back-projection  N·(S·q + C)·b²                               every rank (fixed blocks)
    gridding         2·(S + C)·P³·log2 P·(g + 1)                  the two ranks of the two half maps
    writing          (S + C)·b³,  S·N                             rank 0
    post-processing  M·b³·log2 b,  M·N                            rank 0
    local resolution M·b³                                         every rank (window centres)
    start-up         R,  R·N,  R·(M + 1)·b³                       every rank (reads the STAR file, map, masks)

Wall time: each component's CPU divided by the ranks that share it (above); core-hours = R × wall: a cluster
charges the ranks that wait for rank 0 (MPI ranks wait spinning, so their CPU is charged anyway).

Memory (peak, bytes), fitted on the ranks' measured private memory (RssAnon) and shared memory (RssShmem):

    rank 0        a0 + a1·P³ + a2·I + a3·M·b³   (a half map's accumulators and gridding; the insertion; masks and maps)
    rank 1        r0 + r1·P³ + r2·I + r3·M·b³   (the other half map's gridding, when R ≥ 2)
    other ranks   w0 + w1·P³ + w2·I + w3·M·b³   (accumulators of their share of the back-projection, when R ≥ 3)
    (I = min(min(N, B)·S_b, 2^20): the samples of one insertion call, B the images of a back-projection batch
     (`reconstruction.backproject.image_batch`), S_b an image's half-spectrum pixels within Nyquist)
    shared        h1·B   (B: bytes of the largest stage's band-limited reference volumes, one copy per node)
    node          Σ of its ranks' private peaks + shared

The coefficients live in `refine.cost_coefficients` (written by ``python benchmarks/bench_scale.py --fit``, with the
command, commit and date that produced them); `fit` is the least squares that makes them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lorefine_mpi.projection import fourier
from lorefine_mpi.reconstruction.backproject import INSERT_SAMPLES, image_batch
from lorefine_mpi.refine import cost
from lorefine_mpi.refine.cost import BAND_SAMPLE, PRIOR_SAMPLE
from lorefine_mpi.refine.cost import GIB as GiB


@dataclasses.dataclass(frozen=True)
class ModuleShape:
    """One module's search: its CCC evaluations per particle (search; flat-prior pilot, 0 when no width is learned),
    its 2D mask pixels on the working grid (`mask_pixels`), and the directions of the even grid its stages project
    (`cost.grid_directions` at its angular step; 0 when not known, as in records made before it was a feature)."""

    evaluations: float
    pilot_evaluations: float
    mask_pixels: float
    directions: float = 0.0


def module_shape(search, pixels: float) -> ModuleShape:
    """A module's `ModuleShape` for its search settings (`config.schema.SearchConfig` or a module's effective search)
    and its mask's pixels on the working grid (`mask_pixels`)."""
    pilot = cost.evaluations(search, "simultaneous") if cost.learns_prior(search) else 0.0
    return ModuleShape(cost.evaluations(search), pilot, pixels, float(cost.grid_directions(search.angular_step_deg)))


@dataclasses.dataclass(frozen=True)
class RunShape:
    n_particles: int
    box_px: int
    modules: tuple  # of ModuleShape
    iterations: int = 2
    ranks_per_node: int = 1
    nodes: int = 1
    padding: int = 2
    gridding_iterations: int = 10
    max_poses: int = 1
    consensus_halves: bool = True  # the consensus half maps are reconstructed (not given)
    postprocess: bool = True
    local_resolution: bool = True
    band_px: float | None = None  # the largest module's search band (px; None: Nyquist), for the shared volumes

    @property
    def ranks(self) -> int:
        return self.ranks_per_node * self.nodes

    @property
    def stages(self) -> int:
        return self.iterations * len(self.modules)


def mask_pixels(diameter_px: float, box_px: int, band_px: float) -> float:
    """The pixels J of a round 2D mask of ``diameter_px`` (image px) on the search's working grid
    (`search.local.working_box`: the mask shrinks with the grid)."""
    from lorefine_mpi.search.local import working_box

    return math.pi / 4.0 * (diameter_px * working_box(box_px, band_px) / box_px) ** 2


def run_shape(cfg, summary, *, ranks_per_node: int = 1, nodes: int = 1, band_px: dict | None = None,
              band_fraction: float | None = None) -> RunShape:
    """The shape of the run of ``cfg`` whose inputs `refine.preflight.check_inputs` summarised (``summary``), on
    ``nodes`` × ``ranks_per_node`` ranks. The search band of each module: ``band_px`` {module name: px, or a list of
    each iteration's px} when known (a finished run's), else ``search.max_resolution_angstrom`` when given, else (auto) ``band_fraction`` of Nyquist
    (default: the median of the runs the model was fitted on, `cost_coefficients.BAND_FRACTION`). The CCC evaluations
    are `refine.cost.evaluations`' (the same count the work bound uses); ``iterations: auto`` counts as
    ``convergence.max_iterations`` (at most)."""
    from lorefine_mpi.search import options
    from lorefine_mpi.search.band import band_from_resolution

    box, voxel = summary.box, summary.pixel_size_angstrom
    resolution = cfg.search.max_resolution_angstrom
    if band_fraction is None:
        from lorefine_mpi.refine.cost_coefficients import BAND_FRACTION as band_fraction
    modules, bands = [], []
    for module in summary.modules:
        search = module.search
        if band_px and module.name in band_px:
            found = [float(b) for b in np.atleast_1d(band_px[module.name])]
        elif options.is_auto(resolution):
            found = [band_fraction * box / 2]
        else:
            found = [band_from_resolution(float(resolution), voxel, box)]
        band = max(found)
        # the search's own mask (`refine.preflight`) on each iteration's working grid, on average
        pixels = float(np.mean([mask_pixels(module.mask_diameter_px, box, b) for b in found]))
        modules.append(module_shape(search, pixels))
        bands.append(band)
    post = cfg.postprocess
    iterations = cfg.iterations if isinstance(cfg.iterations, int) else cfg.convergence.max_iterations
    return RunShape(
        n_particles=summary.n_particles, box_px=box, modules=tuple(modules), iterations=iterations, ranks_per_node=ranks_per_node,
        nodes=nodes, padding=cfg.reconstruction.padding, gridding_iterations=cfg.reconstruction.gridding_iterations,
        max_poses=cfg.reconstruction.max_poses,
        consensus_halves=not cfg.consensus_half_maps and (options.is_auto(resolution) or post.enabled),
        postprocess=post.enabled, local_resolution=post.local_resolution, band_px=max(bands),
    )


def _volume_log(shape: RunShape) -> float:
    big = shape.padding * shape.box_px
    return big**3 * math.log2(big)


def reference_volumes(shape: RunShape) -> float:
    """Reference volumes prepared over the run (`RefineEngine.stage_search`): the module's and the rest's (the first stage:
    one rest, the model outside the module; every later stage: the M − 1 other modules and the remainder)."""
    m = len(shape.modules)
    return 2.0 + (shape.stages - 1) * (m + 1.0)


# Each component: (its terms {name: feature(shape)}, how its CPU is shared: "ranks", "root", "halves", "node", "rank").
COMPONENTS = {
    "search": ({
        "per_image_px": lambda s: s.n_particles * s.stages * s.box_px**2,
        "per_candidate_px": lambda s: s.n_particles * s.iterations * sum(m.evaluations * m.mask_pixels for m in s.modules),
        # each stage projects the grid's directions once into its reference cache, whatever N (given enough particles to
        # touch them all): the search's cost per particle falls as N grows
        "per_direction_px": lambda s: s.iterations * sum(m.directions for m in s.modules) * (s.band_px or s.box_px / 2) ** 2,
    }, "ranks"),
    "prior pilot": ({
        "per_candidate_px": lambda s: s.iterations * min(s.n_particles, PRIOR_SAMPLE) * sum(m.pilot_evaluations * m.mask_pixels for m in s.modules),
    }, "ranks"),
    "band": ({
        "per_image_px": lambda s: s.stages * min(s.n_particles, BAND_SAMPLE) * s.box_px**2,
        "per_volume": lambda s: s.stages * _volume_log(s),
    }, "root"),
    "stage set-up": ({
        "per_volume": lambda s: s.nodes * reference_volumes(s) * _volume_log(s),
    }, "node"),
    "back-projection": ({
        "per_image_px": lambda s: s.n_particles * (s.stages * s.max_poses + s.consensus_halves) * s.box_px**2,
    }, "ranks"),
    "gridding": ({
        "per_volume": lambda s: 2 * (s.stages + s.consensus_halves) * _volume_log(s) * (s.gridding_iterations + 1),
    }, "halves"),
    "writing": ({
        "per_map_voxel": lambda s: (s.stages + s.consensus_halves) * s.box_px**3,
        "per_particle": lambda s: s.stages * s.n_particles,
    }, "root"),
    "post-processing": ({
        "per_map_voxel": lambda s: s.postprocess * len(s.modules) * s.box_px**3 * math.log2(s.box_px),
        "per_particle": lambda s: s.postprocess * len(s.modules) * s.n_particles,
    }, "root"),
    "local resolution": ({
        "per_map_voxel": lambda s: s.postprocess * s.local_resolution * len(s.modules) * s.box_px**3,
    }, "ranks"),
    "start-up": ({
        "per_rank": lambda s: s.ranks,
        "per_particle": lambda s: s.ranks * s.n_particles,
        "per_map_voxel": lambda s: s.ranks * (len(s.modules) + 1) * s.box_px**3,
    }, "rank"),
}


MEMORY_ROLES = ("rank 0", "rank 1", "other ranks", "shared")


def role_features(shape: RunShape) -> dict:
    """The features of a rank's private memory: a constant; the padded volume's voxels P³ (the accumulators and the
    gridding's grids); the samples of one insertion call, min(min(N, B) · the pixels of an image's half spectrum within
    Nyquist, `INSERT_SAMPLES`), B the images of a back-projection batch (`image_batch`) (the insertion's work arrays,
    which stop growing at that cap: what made the memory grow more slowly than P³ from box 64 to 256); the modules'
    voxels M·b³ (their masks and maps). No term in N: from 500 to 4,000 particles the measured peaks do not move
    (`docs/scale.md`)."""
    samples = min(min(shape.n_particles, image_batch(shape.box_px)) * len(fourier.band_grid(shape.box_px).kx), INSERT_SAMPLES)
    return {"constant": 1.0, "per_padded_voxel": float((shape.padding * shape.box_px) ** 3), "per_insert_sample": float(samples),
            "per_module_voxel": float(len(shape.modules) * shape.box_px**3)}


def shared_bytes(shape: RunShape) -> float:
    """Bytes of the largest stage's reference volumes (complex64, band-limited, `fourier.band_shape`), one copy per
    node (`RefineEngine._fourier_volume`): the module's and the rest's (2 in the first stage, M + 1 in a later one)."""
    radius = shape.box_px / 2 if shape.band_px is None else min(shape.band_px, shape.box_px / 2)
    volumes = 2 if shape.stages == 1 else len(shape.modules) + 1
    return volumes * math.prod(fourier.band_shape(shape.box_px, shape.padding, radius)) * 8.0


def features(shape: RunShape) -> dict:
    """{component: {term: feature value}} of the work."""
    return {name: {term: float(f(shape)) for term, f in terms.items()} for name, (terms, _) in COMPONENTS.items()}


def work_seconds(shape: RunShape, coefficients: dict) -> dict:
    """{component: CPU seconds summed over the ranks} (coefficients: {component: {term: s per feature unit}})."""
    return {name: sum(coefficients[name].get(term, 0.0) * value for term, value in terms.items())
            for name, terms in features(shape).items()}


def wall_seconds(shape: RunShape, coefficients: dict) -> float:
    """The run's wall time if every rank has a core of its own: each component's CPU over the ranks that share it."""
    work = work_seconds(shape, coefficients)
    sharing = {"ranks": shape.ranks, "root": 1, "halves": min(shape.ranks, 2), "node": shape.nodes, "rank": shape.ranks}
    return sum(seconds / sharing[COMPONENTS[name][1]] for name, seconds in work.items())


def memory_bytes(shape: RunShape, coefficients: dict) -> dict:
    """Peak bytes: "rank 0", "rank 1", "other ranks" (private, each), "shared" (once per node, with 2 ranks or more) and
    "node": the fullest node's private peaks + shared, ranks placed on the nodes in blocks (Slurm's default: rank 0 and
    rank 1 on the first node when it has 2 ranks or more)."""
    out = {role: sum(coefficients[role].get(term, 0.0) * v for term, v in role_features(shape).items())
           for role in ("rank 0", "rank 1", "other ranks")}
    out["shared"] = coefficients["shared"].get("per_byte", 0.0) * shared_bytes(shape) if shape.ranks > 1 else 0.0
    r, total = shape.ranks_per_node, shape.ranks
    if total == 1:
        nodes = [out["rank 0"]]
    elif r == 1:
        nodes = [out["rank 0"], out["rank 1"], out["other ranks"]]
    else:
        nodes = [out["rank 0"] + out["rank 1"] + min(r - 2, total - 2) * out["other ranks"], min(r, total - r) * out["other ranks"]]
    out["node"] = max(nodes) + out["shared"]
    return out


@dataclasses.dataclass
class Estimate:
    work_seconds: dict
    wall_seconds: float
    memory: dict
    shape: RunShape

    @property
    def core_hours(self) -> float:
        """Core-hours a cluster charges: every rank for the whole wall time."""
        return self.shape.ranks * self.wall_seconds / 3600.0

    @property
    def cpu_hours(self) -> float:
        """CPU hours of work (summed over ranks, the waiting not counted)."""
        return sum(self.work_seconds.values()) / 3600.0


def estimate(shape: RunShape, coefficients: dict | None = None) -> Estimate:
    """The model's figures for ``shape`` (default: the fitted coefficients, `refine.cost_coefficients`)."""
    if coefficients is None:
        from lorefine_mpi.refine.cost_coefficients import COEFFICIENTS as coefficients
    return Estimate(work_seconds(shape, coefficients), wall_seconds(shape, coefficients), memory_bytes(shape, coefficients), shape)


def fit(rows: list) -> dict:
    """Least-squares coefficients of one component (or memory role) from measured rows [(features, value)], features
    {term: value}; relative residuals (each row weighted by 1/value, so small runs count as much as large
    ones), coefficients ≥ 0 (non-negative least squares: a cost cannot be negative). Returns {term: coefficient}."""
    from scipy.optimize import nnls

    terms = sorted({t for f, _ in rows for t in f})
    a = np.array([[f.get(t, 0.0) for t in terms] for f, _ in rows], dtype=np.float64)
    y = np.array([v for _, v in rows], dtype=np.float64)
    w = 1.0 / np.maximum(np.abs(y), 1e-12)
    scale = np.maximum(np.abs(a * w[:, None]).max(axis=0), 1e-300)  # columns of comparable size for nnls
    solution, _ = nnls(a * w[:, None] / scale, y * w)
    return {t: float(c / s) for t, c, s in zip(terms, solution, scale)}


# -- what `lorefine check` prints ------------------------------------------------------------------------------------
DEFAULT_LAYOUTS = ((1, 1), (1, 16), (1, 64))  # (nodes, ranks per node) shown when the command line names none
TIME_MARGIN = 1.5  # the suggested --time: the model's wall time × this + 15 min (another CPU, the model's error)
MEMORY_MARGIN = 1.25  # the suggested --mem-per-cpu: the model's node peak / ranks per node × this


def slurm_request(est: Estimate) -> str:
    """The sbatch options for ``est``'s layout: --nodes, --ntasks-per-node, --mem-per-cpu (the node's peak over its
    ranks × `MEMORY_MARGIN`, up to the next 256 MiB) and --time (`TIME_MARGIN`, + 15 min, up to the next 15 min)."""
    s = est.shape
    per_cpu_mib = math.ceil(est.memory["node"] * MEMORY_MARGIN / s.ranks_per_node / 2**20 / 256) * 256
    memory = f"{per_cpu_mib // 1024}G" if per_cpu_mib % 1024 == 0 else f"{per_cpu_mib}M"
    minutes = math.ceil((est.wall_seconds * TIME_MARGIN / 60 + 15) / 15) * 15
    return (f"--nodes={s.nodes} --ntasks-per-node={s.ranks_per_node} --mem-per-cpu={memory} "
            f"--time={minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00")


def _hours(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def summary_lines(cfg, summary, layouts=DEFAULT_LAYOUTS) -> list[str]:
    """`lorefine check`'s lines: the model's CPU core-hours, wall time and peak memory per rank and per node for the
    run of ``cfg`` on each (nodes, ranks per node) of ``layouts``, with the sbatch options of each (`slurm_request`)."""
    from lorefine_mpi.refine import cost_coefficients as fitted

    first = run_shape(cfg, summary)
    band = (f"band auto, taken as {fitted.BAND_FRACTION:.2f} of Nyquist (the measured runs' median)"
            if cfg.search.max_resolution_angstrom == "auto" else f"band {first.band_px:.0f} px")
    out = [f"cost (model)     {first.n_particles} particles × {first.box_px}² × {len(first.modules)} module(s) × {first.iterations} "
           f"iteration(s); {band}; fitted on this machine's CPU ({fitted.MEASURED}; docs/scale.md)"]
    for nodes, per_node in layouts:
        est = estimate(run_shape(cfg, summary, ranks_per_node=per_node, nodes=nodes))
        m = est.memory
        ranks = f"{nodes} node(s) × {per_node} rank(s)"
        others = f", other ranks {m['other ranks'] / GiB:.1f} GiB each" if est.shape.ranks > 2 else ""
        second = f", rank 1 {m['rank 1'] / GiB:.1f} GiB" if est.shape.ranks > 1 else ""
        out.append(f"  {ranks:22} {est.core_hours:9.3g} core-hours, wall {_hours(est.wall_seconds)} (h:min); peak memory rank 0 "
                   f"{m['rank 0'] / GiB:.1f} GiB{second}{others}, shared {m['shared'] / GiB:.1f} GiB, node {m['node'] / GiB:.1f} GiB")
        out.append(f"  {'':22} sbatch {slurm_request(est)}")
    return out
