"""How the modules move: per particle, each module's rigid motion relative to the consensus pose and
relative to the reference module, their distributions, and a principal component analysis of the
relative motion (as ``relion_flex_analyse`` does for multi-body refinements), with maps of the complex
moved along the components.

Motion of a module (the convention of `geometry.rotations`): the module's pose (A, o) is its consensus
pose (A0, o0) with the module moved inside the complex by a rotation Q about its centre c and a shift t,
``p ↦ Q (p − c) + c + t`` in the complex's (consensus map's) frame. Per particle ``Q = A0ᵀ A`` and,
from the origins in the recentred frame (``o' = o − (A c)_xy``), ``(A0 t)_xy = o0' − o'``: the image
fixes t only across the viewing direction, so t is the shortest shift that explains it,
``t = A0ᵀ (o0' − o', 0)`` (the component along the beam is 0, as relion_flex_analyse's translations).
Rotations are reported as rotation vectors (axis × angle) in degrees, shifts in Å.

Relative motion of module k with respect to module j (the reference module): the motion of k in the
frame that moves with j, ``M_j⁻¹ ∘ M_k``: rotation ``Q_jᵀ Q_k`` about c_k and shift
``Q_jᵀ (c_k + t_k − c_j − t_j) + c_j − c_k``: 6 numbers per particle and module pair. The reference is
the first module; the other pairs follow from these, so the PCA takes the 6 (K − 1) numbers of every
module relative to the first (6 for two modules), rotations in degrees and shifts in Å as
relion_flex_analyse mixes them, centred, not scaled.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage

from lorefine_mpi.geometry import rotations
from lorefine_mpi.geometry.volumes import recentre_origins

FRAME_SIGMAS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # maps along each component at these multiples of its σ


@dataclasses.dataclass
class MotionAnalysis:
    """n particles, K modules, P = K − 1 pairs (module k relative to module 0).

    rotation_deg, shift_angstrom: (K, n, 3) each module relative to its consensus pose (complex frame).
    relative_rotation_deg, relative_shift_angstrom: (P, n, 3) module k (k ≥ 1) relative to module 0.
    pairs: [(0, k)]; features: (n, 6P) = per pair [rotation vector deg, shift Å]; mean: (6P,).
    eigenvalues: (6P,) variance of each component (deg², Å² mixed, as the features), largest first;
    variance_explained: (6P,) fraction; components: (6P, 6P) unit vectors, column i = component i;
    scores: (n, 6P) each particle's coordinate along each component.
    """

    module_names: list
    centres_px: np.ndarray
    rotation_deg: np.ndarray
    shift_angstrom: np.ndarray
    pairs: list
    relative_rotation_deg: np.ndarray
    relative_shift_angstrom: np.ndarray
    features: np.ndarray
    mean: np.ndarray
    eigenvalues: np.ndarray
    variance_explained: np.ndarray
    components: np.ndarray
    scores: np.ndarray

    @property
    def angle_deg(self) -> np.ndarray:
        """(K, n) each module's rotation angle away from its consensus pose, degrees."""
        return np.linalg.norm(self.rotation_deg, axis=-1)

    @property
    def shift_length_angstrom(self) -> np.ndarray:
        return np.linalg.norm(self.shift_angstrom, axis=-1)

    def feature_names(self) -> list[str]:
        names = []
        for j, k in self.pairs:
            label = f"{self.module_names[k]}_vs_{self.module_names[j]}"
            names += [f"{label}_rot_{a}_deg" for a in "xyz"] + [f"{label}_shift_{a}_angstrom" for a in "xyz"]
        return names


def module_motion(consensus_matrices, consensus_origin_px, matrices, origin_px, centre_px):
    """(Q (n, 3, 3), t (n, 3) px): a module's rotation about ``centre_px`` and shortest shift away from its
    consensus poses (module docstring). Inputs: (n, 3, 3) and (n, 2) px, consensus frame; centre (3,) xyz px."""
    a0 = np.asarray(consensus_matrices, dtype=np.float64)
    a = np.asarray(matrices, dtype=np.float64)
    q = np.swapaxes(a0, -1, -2) @ a
    delta = recentre_origins(a0, consensus_origin_px, centre_px) - recentre_origins(a, origin_px, centre_px)
    t = np.einsum("nji,nj->ni", a0[:, :2, :], delta)  # A0ᵀ (Δx, Δy, 0)
    return q, t


def relative_motion(q_ref, t_ref, c_ref, q, t, c):
    """Module (q, t, about c) seen from the reference module (q_ref, t_ref, about c_ref): (R (n, 3, 3), s (n, 3) px)."""
    q_ref_t = np.swapaxes(q_ref, -1, -2)
    r = q_ref_t @ q
    c, c_ref = np.asarray(c, dtype=np.float64), np.asarray(c_ref, dtype=np.float64)
    s = np.einsum("nij,nj->ni", q_ref_t, c[None, :] + t - c_ref[None, :] - t_ref) + (c_ref - c)[None, :]
    return r, s


def pca(features):
    """(mean (p,), eigenvalues (p,), variance explained (p,), components (p, p), scores (n, p)) of rows."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigenvalues = singular**2 / max(len(x) - 1, 1)
    total = eigenvalues.sum()
    explained = eigenvalues / total if total > 0 else np.zeros_like(eigenvalues)
    components = vt.T
    signs = np.where(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])] < 0, -1.0, 1.0)
    components = components * signs  # deterministic sign: the largest entry of each component is positive
    return mean, eigenvalues, explained, components, centred @ components


def analyse(module_names, centres_px, consensus_matrices, consensus_origin_px, poses, voxel_size_angstrom: float) -> MotionAnalysis:
    """Motion of every module (module docstring). poses: [(matrices (n, 3, 3), origin_px (n, 2))] per
    module, final poses in the consensus frame; centres_px: (K, 3) xyz px from the box centre."""
    centres = np.asarray(centres_px, dtype=np.float64)
    motions = [module_motion(consensus_matrices, consensus_origin_px, m, o, c) for (m, o), c in zip(poses, centres)]
    rotation_deg = np.stack([np.rad2deg(rotations.rotation_vector(q)) for q, _ in motions])
    shift = np.stack([t for _, t in motions]) * voxel_size_angstrom
    n = rotation_deg.shape[1]
    pairs = [(0, k) for k in range(1, len(poses))]
    rel_rot, rel_shift = [], []
    for j, k in pairs:
        r, s = relative_motion(motions[j][0], motions[j][1], centres[j], motions[k][0], motions[k][1], centres[k])
        rel_rot.append(np.rad2deg(rotations.rotation_vector(r)))
        rel_shift.append(s * voxel_size_angstrom)
    rel_rot = np.array(rel_rot).reshape(len(pairs), n, 3)
    rel_shift = np.array(rel_shift).reshape(len(pairs), n, 3)
    features = np.concatenate([np.concatenate([rel_rot[p], rel_shift[p]], axis=1) for p in range(len(pairs))], axis=1) if pairs else np.zeros((n, 0))
    if features.shape[1] and n > 1:
        mean, eigenvalues, explained, components, scores = pca(features)
    else:
        mean, eigenvalues, explained, components, scores = (np.zeros(features.shape[1]), np.zeros(0), np.zeros(0),
                                                            np.zeros((features.shape[1], 0)), np.zeros((n, 0)))
    return MotionAnalysis(list(module_names), centres, rotation_deg, shift, pairs, rel_rot, rel_shift, features,
                          mean, eigenvalues, explained, components, scores)


def move_volume(volume, rotation_deg, shift_angstrom, centre_px, voxel_size_angstrom: float) -> np.ndarray:
    """The volume (N, N, N) moved rigidly: ``V'(r) = V(Qᵀ (r − c − t) + c)`` with Q the rotation vector
    ``rotation_deg`` (degrees), t = ``shift_angstrom`` / voxel, c = ``centre_px`` (xyz px from the box
    centre); trilinear interpolation (the frames of a motion picture: cubic costs 3× as much), zero outside. Returns float32."""
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    q = rotations.from_rotation_vector(np.deg2rad(np.asarray(rotation_deg, dtype=np.float64)))
    t = np.asarray(shift_angstrom, dtype=np.float64)[::-1] / voxel_size_angstrom  # zyx from here on
    c = np.asarray(centre_px, dtype=np.float64)[::-1]
    back = q.T[::-1, ::-1]  # Qᵀ acting on zyx vectors
    # index i of the source of output index o: i = Qᵀ (o − n/2 − c − t) + c + n/2
    offset = back @ (-(n // 2) - c - t) + c + n // 2
    return scipy.ndimage.affine_transform(v, back, offset, order=1, mode="constant", cval=0.0).astype(np.float32, copy=False)


def component_frames(analysis: MotionAnalysis, module_maps, rest, component: int, voxel_size_angstrom: float,
                     sigmas=FRAME_SIGMAS):
    """Maps (float32) of the complex with its modules at ``mean + s · sqrt(eigenvalue) · component`` for each s in
    ``sigmas``, one after the other (a generator: one frame in memory at a time): the reference module (0) stays,
    module k is moved by its relative motion about its centre, ``rest`` (what lies outside every mask) stays.
    module_maps: K (N, N, N) maps, each the module alone."""
    sd = np.sqrt(analysis.eigenvalues[component])
    for s in sigmas:
        value = analysis.mean + s * sd * analysis.components[:, component]
        frame = np.asarray(rest, dtype=np.float64) + module_maps[0]
        for p, (_, k) in enumerate(analysis.pairs):
            rot, shift = value[6 * p : 6 * p + 3], value[6 * p + 3 : 6 * p + 6]
            frame += move_volume(module_maps[k], rot, shift, analysis.centres_px[k], voxel_size_angstrom)
        yield frame.astype(np.float32)
        del frame


# -- outputs ---------------------------------------------------------------------------------------
def summary(analysis: MotionAnalysis) -> dict:
    """Medians per module and pair, and the PCA (variance explained, components with their feature names)."""
    out = {"modules": {}, "pairs": {}, "feature_names": analysis.feature_names(),
           "centres_px": analysis.centres_px.tolist(), "n_particles": int(analysis.rotation_deg.shape[1])}
    for k, name in enumerate(analysis.module_names):
        out["modules"][name] = {"median_angle_deg": float(np.median(analysis.angle_deg[k])),
                                "median_shift_angstrom": float(np.median(analysis.shift_length_angstrom[k])),
                                "mean_rotation_vector_deg": analysis.rotation_deg[k].mean(0).tolist(),
                                "mean_shift_angstrom": analysis.shift_angstrom[k].mean(0).tolist()}
    for p, (j, k) in enumerate(analysis.pairs):
        label = f"{analysis.module_names[k]}_vs_{analysis.module_names[j]}"
        out["pairs"][label] = {"median_angle_deg": float(np.median(np.linalg.norm(analysis.relative_rotation_deg[p], axis=-1))),
                               "median_shift_angstrom": float(np.median(np.linalg.norm(analysis.relative_shift_angstrom[p], axis=-1)))}
    out["pca"] = {"eigenvalues": analysis.eigenvalues.tolist(), "variance_explained": analysis.variance_explained.tolist(),
                  "components": analysis.components.T.tolist(), "mean": analysis.mean.tolist(),
                  "note": "features: per pair the rotation vector (deg) and shift (Å) of a module relative to the first, in "
                          "the complex's frame; components[i] is component i over feature_names"}
    return out


def write_csv(path, analysis: MotionAnalysis, image_names) -> None:
    """One row per particle (STAR order): rlnImageName, each module's motion relative to its consensus pose,
    each pair's relative motion, the principal component scores. Written to a temporary name, then renamed."""
    import csv
    import io

    from lorefine_mpi.io.star import atomic_write_text

    columns = {"particle": np.arange(1, analysis.rotation_deg.shape[1] + 1), "rlnImageName": np.asarray(image_names)}
    for k, name in enumerate(analysis.module_names):
        columns[f"{name}_angle_deg"] = analysis.angle_deg[k]
        columns[f"{name}_shift_angstrom"] = analysis.shift_length_angstrom[k]
        for i, a in enumerate("xyz"):
            columns[f"{name}_rot_{a}_deg"] = analysis.rotation_deg[k, :, i]
        for i, a in enumerate("xyz"):
            columns[f"{name}_shift_{a}_angstrom"] = analysis.shift_angstrom[k, :, i]
    names = analysis.feature_names()
    for p, (j, k) in enumerate(analysis.pairs):
        label = f"{analysis.module_names[k]}_vs_{analysis.module_names[j]}"
        columns[f"{label}_angle_deg"] = np.linalg.norm(analysis.relative_rotation_deg[p], axis=-1)
        columns[f"{label}_shift_angstrom"] = np.linalg.norm(analysis.relative_shift_angstrom[p], axis=-1)
        for i in range(6):
            columns[names[6 * p + i]] = analysis.features[:, 6 * p + i]
    for i in range(analysis.scores.shape[1]):
        columns[f"pc{i + 1}"] = analysis.scores[:, i]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))
    values = list(columns.values())
    for row in range(len(values[0])):
        writer.writerow([v[row] if isinstance(v[row], str) else (int(v[row]) if c == "particle" else f"{float(v[row]):.6g}")
                         for c, v in zip(columns, values)])
    atomic_write_text(path, buffer.getvalue())


def plot_pose_change_png(path, analysis: MotionAnalysis, module: int, title: str = "") -> None:
    """Histograms of a module's rotation angle (deg) and shift length (Å) away from its consensus pose."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), dpi=110)
    for ax, values, label in ((axes[0], analysis.angle_deg[module], "rotation from the consensus pose (deg)"),
                              (axes[1], analysis.shift_length_angstrom[module], "shift from the consensus pose (Å)")):
        ax.hist(values, bins=40, color="tab:blue", alpha=0.85)
        median = float(np.median(values))
        ax.axvline(median, color="black", ls="--", lw=1, label=f"median {median:.2f}")
        ax.set_xlabel(label)
        ax.set_ylabel("particles")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plots.save_png(fig, path)


def plot_uncertainty_png(path, angle_spread_deg, shift_spread_angstrom, title: str = "") -> None:
    """Histograms of each particle's pose uncertainty for one module: the posterior's RMS angle from the estimate
    (deg) and RMS shift (Å), the STAR file's rlnLorefineAngleSpread and rlnLorefineShiftSpreadAngst."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), dpi=110)
    for ax, values, label in ((axes[0], angle_spread_deg, "posterior angle spread (deg)"),
                              (axes[1], shift_spread_angstrom, "posterior shift spread (Å)")):
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        ax.hist(values, bins=40, color="tab:orange", alpha=0.85)
        if len(values):
            median = float(np.median(values))
            ax.axvline(median, color="black", ls="--", lw=1, label=f"median {median:.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("particles")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plots.save_png(fig, path)


def plot_relative_png(path, analysis: MotionAnalysis) -> None:
    """Per pair: histograms of the relative rotation angle and shift, and the components of the rotation vector."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    rows = max(len(analysis.pairs), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.2 * rows), dpi=110, squeeze=False)
    for p, (j, k) in enumerate(analysis.pairs):
        label = f"{analysis.module_names[k]} relative to {analysis.module_names[j]}"
        rot, shift = analysis.relative_rotation_deg[p], analysis.relative_shift_angstrom[p]
        axes[p, 0].hist(np.linalg.norm(rot, axis=-1), bins=40, color="tab:purple", alpha=0.85)
        axes[p, 0].set_xlabel("relative rotation angle (deg)")
        axes[p, 1].hist(np.linalg.norm(shift, axis=-1), bins=40, color="tab:purple", alpha=0.85)
        axes[p, 1].set_xlabel("relative shift (Å)")
        for i, a in enumerate("xyz"):
            axes[p, 2].hist(rot[:, i], bins=40, histtype="step", lw=1.2, label=f"rotation about {a}")
        axes[p, 2].set_xlabel("rotation vector component (deg)")
        axes[p, 2].legend(fontsize=7)
        axes[p, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    plots.save_png(fig, path)


def plot_pca_png(path, analysis: MotionAnalysis) -> None:
    """Variance explained per component, the particles' scores on the first two, the first component's loadings."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    count = len(analysis.variance_explained)
    axes[0].bar(np.arange(1, count + 1), 100 * analysis.variance_explained, color="tab:green")
    axes[0].set_xlabel("principal component")
    axes[0].set_ylabel("variance explained (%)")
    axes[0].set_xticks(np.arange(1, count + 1))
    if analysis.scores.shape[1] >= 2:
        axes[1].hist2d(analysis.scores[:, 0], analysis.scores[:, 1], bins=40, cmap="Blues")
        axes[1].set_xlabel("PC1 score")
        axes[1].set_ylabel("PC2 score")
    elif analysis.scores.shape[1] == 1:
        axes[1].hist(analysis.scores[:, 0], bins=40)
        axes[1].set_xlabel("PC1 score")
    names = analysis.feature_names()
    if count:
        axes[2].barh(np.arange(len(names)), analysis.components[:, 0], color="tab:orange")
        axes[2].set_yticks(np.arange(len(names)))
        axes[2].set_yticklabels(names, fontsize=7)
        axes[2].invert_yaxis()
        axes[2].set_xlabel("PC1 loading (deg and Å features)")
    fig.tight_layout()
    plots.save_png(fig, path)
