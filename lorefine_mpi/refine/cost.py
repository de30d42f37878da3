"""What a run will cost, bounded before anything large is allocated: `lorefine check` prints it, and `check` and
`refine` refuse a setting that cannot run on this machine or would run for more than `MAX_WORK_MULTIPLE` times a
sane run, naming the key and the figure (`check_cost`).

Two kinds of figures, two owners: this module's are *bounds*, analytic and safe to refuse on (a run below them may
still fail; one above them certainly cannot run); `refine.cost_model`'s are *expectations* (CPU core-hours, wall time,
peak memory per rank and per node) fitted on measured runs (docs/scale.md), what `lorefine check` prints for a cluster
and asks Slurm for, never a reason to refuse. The model counts a search's CCC evaluations with `evaluations` here.

Memory: the arrays one process certainly holds at once, each at its least size, in the phase of the run where their
sum is largest (a lower bound of the peak; what the run really needs is more): the maps (consensus, masks, the model
and the modules' maps), the process's half-map accumulator (complex128 data and float64 weights over the padded Fourier
grid) with the gridding's float32 weights, the reference volumes (only when the search band is given: an ``auto``
band is found from the data), the direction grids of the search and of the projection classes with their largest
work arrays, a work unit's image spectra, and one particle's score cube (simultaneous strategy, and the prior's
pilot). If even that is more than this process may use (`memory_limit_bytes`: the machine's memory, its cgroup's
limit — Slurm's ``--mem`` — and ``ulimit -v``), the run cannot finish and is refused.

Work, in multiply-adds: the search's candidate evaluations (each a masked CCC of J pixels; J taken as a disc of half
the box) and the prior pilot's, the projection-class assignment of every stage (3 per particle and class direction),
and the local-resolution windows (four FFTs of the window's box per centre). A *sane run* is the same data with
lorefine's default settings and the paper's exhaustive (simultaneous) search; a setting costing more than
`MAX_WORK_MULTIPLE` times that is refused, naming the keys that make it so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
from pathlib import Path

from lorefine_mpi.config.schema import MODULE_SEARCH_KEYS, Config, PostprocessConfig, SearchConfig
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import candidates
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import options

MAX_WORK_MULTIPLE = 100.0
GIB = float(2**30)
PRIOR_SAMPLE = 300  # = refine.engine.PRIOR_SAMPLE (the pilot's particles)
BAND_SAMPLE = 1000  # = refine.engine.BAND_SAMPLE (the band's images)
GRID_BYTES = 64.0  # a direction of `geometry.candidates.direction_grid` while it is made: (m, 3) float64 and its float64 temporaries


def size_text(n_bytes: float) -> str:
    """'512 MiB', '4.9 GiB'."""
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.0f} MiB"


# -- the candidates of a search -------------------------------------------------------------------
def grid_directions(step_deg: float) -> int:
    """How many directions the even grid D holds at this step (`geometry.candidates.direction_grid`)."""
    return max(int(round(4 * math.pi / math.radians(step_deg) ** 2)), 2)


def cone_directions(search) -> float:
    """The directions of D in one particle's cone, on average (the grid's density times the cone's area), at least 1."""
    return max(1.0, grid_directions(search.angular_step_deg) * (1 - math.cos(math.radians(search.cone_half_angle_deg))) / 2)


def psi_angles(search) -> int:
    return 2 * int(math.floor(search.psi_half_range_deg / search.psi_step_deg + 1e-9)) + 1


def shifts(search) -> int:
    return (2 * int(math.floor(search.max_shift_px / search.shift_step_px + 1e-9)) + 1) ** 2


def evaluations(search, strategy: str | None = None) -> float:
    """CCC evaluations per particle and module of a `SearchConfig` (``strategy`` overrides its own)."""
    orientations = cone_directions(search) * psi_angles(search)
    chosen = options.STRATEGIES[strategy or search.strategy]
    return chosen.evaluations_per_particle(orientations, shifts(search), min(search.n_random_angles, orientations))


def learns_prior(search) -> bool:
    return options.is_auto(search.prior_sigma_deg) or options.is_auto(search.prior_sigma_px)


# -- the figures ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cost:
    """memory: {part: (bytes, the key that sets it)} of the phase with the largest sum (a lower bound of the peak);
    work: multiply-adds of the run; sane_work: of the same data with the default settings and the paper's exhaustive
    search; work_parts: {key: multiply-adds}; evaluations: the largest module's CCC evaluations per particle."""

    memory: dict
    work: float
    sane_work: float
    work_parts: dict
    evaluations: float

    @property
    def memory_bytes(self) -> float:
        return float(sum(b for b, _ in self.memory.values()))

    @property
    def multiple(self) -> float:
        return self.work / self.sane_work

    def lines(self, limit: tuple[float, str] | None = None) -> list[str]:
        """What `lorefine check` prints."""
        limit = limit or memory_limit_bytes()
        largest = sorted(self.memory.items(), key=lambda kv: -kv[1][0])[:3]
        parts = ", ".join(f"{name} {size_text(b)}" for name, (b, _) in largest)
        return [f"memory           at least {size_text(self.memory_bytes)} per process ({parts}); {size_text(limit[0])} "
                f"allowed here ({limit[1]})",
                f"work             {self.multiple:.2g} × a sane run (defaults with the paper's exhaustive search on this data; "
                f"refused beyond {MAX_WORK_MULTIPLE:g} ×)"]  # the evaluations per particle: said once, by the search's line


def _module_searches(cfg) -> list[tuple[str, SearchConfig]]:
    """(where its keys are set, SearchConfig) of every module."""
    out = []
    for i, m in enumerate(cfg.modules):
        own = any(getattr(m, k) is not None for k in MODULE_SEARCH_KEYS)
        out.append((f"modules[{i}]" if own else "search", m.search(cfg.search)))
    return out


def _work(cfg, n: int, box: int, voxel: float, mask_fill: list[float]) -> dict:
    """{key: multiply-adds} of a run of ``cfg`` on n particles of box N (module docstring)."""
    pixels = math.pi / 4 * (box / 2) ** 2  # J: a disc of half the box
    classes = grid_directions(cfg.parallel.class_spacing_deg)
    parts: dict[str, float] = {}

    def add(key, value):
        parts[key] = parts.get(key, 0.0) + value

    iterations = cfg.iterations if isinstance(cfg.iterations, int) else cfg.convergence.max_iterations  # at most
    for where, s in _module_searches(cfg):
        add(f"{where} (search)", iterations * n * evaluations(s) * pixels)
        if learns_prior(s):
            add(f"{where} (the prior's pilot)", iterations * min(n, PRIOR_SAMPLE) * evaluations(s, "simultaneous") * pixels)
        add("parallel.class_spacing_deg", iterations * 3.0 * n * classes)
    p = cfg.postprocess
    if p.enabled and p.local_resolution:
        from lorefine_mpi.validation.locres import LocresSettings

        radius, _, step, d = LocresSettings(p.locres_radius_angstrom, p.locres_edge_angstrom, p.locres_step_angstrom).in_voxels(voxel, box)
        sphere = 4 / 3 * math.pi * max(box / 2 - radius, 1.0) ** 3
        for fill in mask_fill:  # the windows near the module (at least the mask's share of the sphere)
            centres = max(1.0, min(1.0, fill) * sphere / step**3)
            add("postprocess.locres_step_angstrom", centres * 4 * 2.5 * d**3 * math.log2(d**3))
    return parts


def _sane(cfg):
    """The same data (inputs, modules, iterations) with the default settings and the paper's exhaustive search."""
    modules = tuple(dataclasses.replace(m, **{k: None for k in MODULE_SEARCH_KEYS}) for m in cfg.modules)
    return dataclasses.replace(cfg, modules=modules, search=SearchConfig(strategy="simultaneous"), parallel=type(cfg.parallel)(),
                               postprocess=PostprocessConfig(), reconstruction=type(cfg.reconstruction)())


def reconstruction_bytes(box: int, padding: int, gridding: bool = True) -> dict:
    """{part: bytes} of a reconstruction: the one accumulator a process holds (complex128 data, float64 weights over the
    padded Fourier band; the two half maps in turn or on two ranks, `reconstruction.reconstruct.distributed_half_maps`)
    and the weights in the padded half grid (float32), which the weighting reads while its other grids sit in the
    accumulator's own memory (`BackProjector.reconstruct` with ``consume``; without gridding iterations the factors too)."""
    band = math.prod(fourier.band_shape(box, padding))
    p = box * padding
    half_grid = p * p * (p // 2 + 1)
    return {"accumulators": band * 24.0, "gridding": half_grid * (4.0 if gridding else 8.0)}


def estimate(cfg: Config, n: int, box: int, voxel: float, mask_fill=None) -> Cost:
    """The figures of a run of ``cfg`` on n particles of box N, voxel size (Å): analytic, nothing allocated.
    mask_fill: each module's mask volume as a fraction of the box (for the local-resolution windows; 1 if unknown)."""
    mask_fill = list(mask_fill) if mask_fill is not None else [1.0] * len(cfg.modules)
    k = len(cfg.modules)
    spectrum = box * (box // 2 + 1)
    auto_band = cfg.search.max_resolution_angstrom == "auto"
    halves_first = auto_band or bool(cfg.consensus_half_maps)  # the consensus half maps are made before any search
    masked = cfg.modules[0].mask is not None
    maps = ((2 * k + 1) + (2 if halves_first else 0)) * box**3 * 4.0
    recon = reconstruction_bytes(box, cfg.reconstruction.padding, cfg.reconstruction.gridding_iterations > 0)
    searches = _module_searches(cfg)
    where, largest = max(searches, key=lambda ws: evaluations(ws[1], "simultaneous"))
    cube = 0.0  # one particle's (ψ, direction, shift) scores: the simultaneous search's and the prior pilot's
    for _, s in searches:
        if options.STRATEGIES[s.strategy].exhaustive or learns_prior(s):
            cube = max(cube, psi_angles(s) * cone_directions(s) * shifts(s) * 4.0)
    classes = grid_directions(cfg.parallel.class_spacing_deg)
    # the grid as `candidates.direction_grid` makes it (GRID_BYTES), the nearest-direction product
    class_grid = classes * GRID_BYTES + min(n, candidates.rows_at_once(classes)) * classes * 8.0
    unit_particles = min(cfg.parallel.unit_size, math.ceil(n / classes))  # the largest class has at least n / classes
    unit = unit_particles * spectrum * 8.0 * (2 if masked else 1)
    # D, and a unit's (particles × D) float64 products and bool masks of the directions in their cones (`search.local`)
    search_grid = max(grid_directions(s.angular_step_deg) for _, s in searches) * (GRID_BYTES + 9.0 * unit_particles)
    held = {"maps": (maps, "consensus_map")}
    if halves_first:
        held["accumulators"] = (recon["accumulators"], "reconstruction.padding")
    phases = [
        dict(held) | {"accumulators": (recon["accumulators"], "reconstruction.padding"),
                      "gridding": (recon["gridding"], "reconstruction.padding")},
        dict(held) | {"class grid": (class_grid, "parallel.class_spacing_deg")},
        dict(held) | {"search grid": (search_grid, f"{where}.angular_step_deg"),
                      "work unit": (unit, "parallel.unit_size"),
                      "score cube": (cube, f"{where}.cone_half_angle_deg")},
    ]
    if auto_band:
        # the sample's projections, kept in the band's pixels while its images are worked through in parts
        phases[2]["band sample"] = (min(n, BAND_SAMPLE) * spectrum * 8.0, "search.max_resolution_angstrom")
    else:
        from lorefine_mpi.search.band import band_from_resolution

        radius = band_from_resolution(cfg.search.max_resolution_angstrom, voxel, box)
        volumes = 1 + (1 if masked else 0)
        phases[2]["references"] = (volumes * math.prod(fourier.band_shape(box, cfg.reconstruction.padding, radius)) * 8.0,
                                   "search.max_resolution_angstrom")
    memory = max(phases, key=lambda ph: sum(b for b, _ in ph.values()))
    parts = _work(cfg, n, box, voxel, mask_fill)
    sane = _work(_sane(cfg), n, box, voxel, mask_fill)
    return Cost({name: v for name, v in memory.items() if v[0] > 0}, sum(parts.values()), sum(sane.values()), parts,
                max(evaluations(s) for _, s in searches))


# -- this machine ---------------------------------------------------------------------------------------
_UNLIMITED = 2**60


def _read_limit(path: Path) -> float | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit
    value = int(text)
    return float(value) if value < _UNLIMITED else None


def _cgroup_limits() -> list[float]:
    """The memory limits of this process's cgroups (v2 memory.max, v1 memory.limit_in_bytes), where readable."""
    found = []
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, where = line.split(":", 2)
        where = where.lstrip("/")
        if controllers == "":
            candidates = [root / where / "memory.max", root / "memory.max"]
        elif "memory" in controllers.split(","):
            candidates = [root / "memory" / where / "memory.limit_in_bytes", root / "memory" / "memory.limit_in_bytes"]
        else:
            continue
        found += [v for v in (_read_limit(c) for c in candidates) if v is not None]
    return found


def memory_limit_bytes() -> tuple[float, str]:
    """(bytes, what sets it): the memory one process of this machine may use: its physical memory, less if its cgroup
    (a Slurm job's --mem) or ``ulimit -v`` / ``-d`` says so."""
    limits = []
    try:
        limits.append((float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    limits += [(v, "the cgroup's memory limit (e.g. Slurm's --mem)") for v in _cgroup_limits()]
    for name, what in ((resource.RLIMIT_AS, "ulimit -v"), (resource.RLIMIT_DATA, "ulimit -d")):
        soft = resource.getrlimit(name)[0]
        if soft not in (resource.RLIM_INFINITY, -1) and soft < _UNLIMITED:
            limits.append((float(soft), what))
    return min(limits) if limits else (float("inf"), "unknown")


# -- the verdict ----------------------------------------------------------------------------------------
def check_memory(parts: dict, key: str, value, limit: tuple[float, str] | None = None) -> None:
    """InputError naming ``key`` (and its ``value``) when ``parts`` ({part: bytes or (bytes, key)}) do not fit."""
    limit = limit or memory_limit_bytes()
    sizes = {name: (v[0] if isinstance(v, tuple) else v) for name, v in parts.items()}
    total = sum(sizes.values())
    if total > limit[0]:
        listed = ", ".join(f"{name} {size_text(b)}" for name, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
        raise InputError(f"{key}: {value} needs at least {size_text(total)} on one process ({listed}); this machine allows "
                         f"{size_text(limit[0])} ({limit[1]})")


def check_cost(cost: Cost, cfg, box: int, limit: tuple[float, str] | None = None) -> None:
    """Refuse a run that cannot fit this process's memory or would work more than `MAX_WORK_MULTIPLE` × a sane run."""
    limit = limit or memory_limit_bytes()
    if cost.memory_bytes > limit[0]:
        name, (_, key) = max(cost.memory.items(), key=lambda kv: kv[1][0])
        check_memory(cost.memory, key, f"{_value(cfg, key, box)} ({name})", limit)
    if cost.multiple > MAX_WORK_MULTIPLE:
        key = max(cost.work_parts, key=cost.work_parts.get)
        share = cost.work_parts[key] / cost.work
        raise InputError(
            f"{_keys(cfg, key)}: the run would do {cost.multiple:,.0f} × the work of a sane run on these data (lorefine's defaults "
            f"with the paper's exhaustive search; {cost.work:.3g} multiply-adds, {100 * share:.0f} % of them here"
            f"{_evaluations(cfg, key)}); lorefine refuses more than {MAX_WORK_MULTIPLE:g} ×: {_advice(key)}")


def _value(cfg, key: str, box: int) -> str:
    if key == "consensus_map":
        return f"box {box}"
    section, _, name = key.partition(".")
    if section.startswith("modules["):
        return str(getattr(cfg.modules[int(section[8:-1])].search(cfg.search), name))
    return str(getattr(getattr(cfg, section), name))


def _keys(cfg, part: str) -> str:
    """The keys that set a part of the work, with their values."""
    where = part.split(" ")[0]
    if where in ("search",) or where.startswith("modules["):
        s = cfg.search if where == "search" else cfg.modules[int(where[8:-1])].search(cfg.search)
        paper = SearchConfig()
        larger = {  # the keys whose values make the search larger than the paper's
            "strategy": options.STRATEGIES[s.strategy].exhaustive and not options.STRATEGIES[paper.strategy].exhaustive,
            "cone_half_angle_deg": s.cone_half_angle_deg > paper.cone_half_angle_deg,
            "angular_step_deg": s.angular_step_deg < paper.angular_step_deg,
            "psi_half_range_deg": s.psi_half_range_deg > paper.psi_half_range_deg,
            "psi_step_deg": s.psi_step_deg < paper.psi_step_deg,
            "max_shift_px": s.max_shift_px > paper.max_shift_px,
            "n_random_angles": not options.STRATEGIES[s.strategy].exhaustive and s.n_random_angles > paper.n_random_angles,
        }
        names = [k for k, bigger in larger.items() if bigger] or ["cone_half_angle_deg", "angular_step_deg"]
        return ", ".join(f"{where}.{k} {getattr(s, k):g}" if k != "strategy" else f"{where}.strategy {s.strategy}" for k in names)
    section, _, name = where.partition(".")
    return f"{where} {getattr(getattr(cfg, section), name)}"


def _evaluations(cfg, part: str) -> str:
    where = part.split(" ")[0]
    if where != "search" and not where.startswith("modules["):
        return ""
    s = cfg.search if where == "search" else cfg.modules[int(where[8:-1])].search(cfg.search)
    strategy = "simultaneous" if "pilot" in part else None
    return (f"; {cone_directions(s):,.0f} directions × {psi_angles(s)} ψ × {shifts(s)} shifts: {evaluations(s, strategy):,.0f} CCC "
            f"evaluations per particle{' in the pilot' if strategy else ''}, the paper's exhaustive search makes "
            f"{evaluations(SearchConfig(), 'simultaneous'):,.0f}")


def _advice(part: str) -> str:
    if part.startswith("parallel.class_spacing_deg"):
        return "use a coarser parallel.class_spacing_deg (default 7.5)"
    if part.startswith("postprocess.locres"):
        return "use a coarser postprocess.locres_step_angstrom (default 25), or postprocess.local_resolution: false"
    return "narrow the cone, coarsen the angular or ψ step, or use fewer shifts (or the separate strategy)"
