"""`lorefine simulate`: files, noise-free images = sum of module projections, SNR, ground-truth STAR, determinism."""

import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import yaml

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.star import read_star
from lorefine_mpi.projection import fourier
from lorefine_mpi.simulate.dataset import full_spectrum_mean_square
from lorefine_mpi.simulate.phantoms import make_phantom


def simulate(folder, **overrides):
    cfg = {"output": "ds", "seed": 5, "n_particles": 60, "box": 32, "pixel_size_angstrom": 4.0, "noise": {"snr": None}} | overrides
    (folder / "sim.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "simulate", str(folder / "sim.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "ds"


def stack(path):
    with mrcfile.open(path) as m:
        return np.array(m.data, dtype=np.float64)


def test_noise_free_images_are_the_sum_of_module_projections(tmp_path):
    ds = simulate(tmp_path)
    for name in ("particles.star", "particles.mrcs", "gt_module_1.star", "gt_module_2.star", "gt_whole.mrc", "gt_module_1.mrc",
                 "mask_module_1.mrc", "mask_module_2.mrc", "consensus.mrc", "dataset.yaml", "lorefine.yaml"):
        assert (ds / name).exists(), name
    images = stack(ds / "particles.mrcs")
    total = 0
    for k in (1, 2):
        truth = read_star(ds / f"gt_module_{k}.star")
        a = truth.matrices
        total = total + fourier.to_real(fourier.project(fourier.prepare_volume(stack(ds / f"gt_module_{k}.mrc")), a, truth.origin_px), 32)
    np.testing.assert_allclose(total, images, atol=2e-3 * np.abs(images).max())
    table = read_star(ds / "particles.star")
    assert set(table.random_subset.tolist()) == {1, 2}
    check = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "check", str(ds / "lorefine.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_snr_is_as_asked_and_same_seed_gives_the_same_bits(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = simulate(tmp_path / "a", noise={"snr": 0.25}, n_particles=200)
    b = simulate(tmp_path / "b", noise={"snr": 0.25}, n_particles=200)
    assert stack(a / "particles.mrcs").tobytes() == stack(b / "particles.mrcs").tobytes()
    stats = yaml.safe_load((a / "dataset.yaml").read_text())["statistics"]
    assert stats["achieved_snr"] == pytest.approx(0.25, rel=0.03)


def test_ctf_and_camera_sets_are_made_at_the_asked_snr(tmp_path):
    ds = simulate(tmp_path, ctf={"n_defocus_groups": 3}, camera={"mtf_a": 0.7}, noise={"snr": 0.5}, n_particles=200)
    table = read_star(ds / "particles.star")
    assert table.has_ctf and len(set(table.defocus_u_angstrom.round(3))) == 3
    stats = yaml.safe_load((ds / "dataset.yaml").read_text())["statistics"]
    assert stats["achieved_snr"] == pytest.approx(0.5, rel=0.03)  # of the detected images, after the MTF


def test_full_spectrum_mean_square_is_the_variance_of_filtered_white_noise():
    box = 32
    kx, ky = fourier.image_frequencies(box)
    half = 1.0 / (1.0 + 3.0 * (kx**2 + ky**2) / (box / 2) ** 2)
    full = np.abs(np.fft.fft2(np.fft.irfft2(half, s=(box, box)))) ** 2  # the same filter on the full grid
    assert full_spectrum_mean_square(half, box) == pytest.approx(full.mean(), rel=1e-9)


def test_phantom_mass_ratio_masks_and_detail():
    ph = make_phantom(48, 11)
    ratio = ph.module_maps[0].sum() / ph.module_maps[1].sum()
    assert 2 * 0.85 <= ratio <= 2 * 1.15
    for m in ph.masks:
        assert m.min() >= 0 and m.max() <= 1 and m.sum() > 0
    spectrum = np.abs(np.fft.rfftn(ph.module_maps[0] + ph.module_maps[1])) ** 2
    k = np.sqrt(sum(g**2 for g in np.meshgrid(np.fft.fftfreq(48), np.fft.fftfreq(48), np.fft.rfftfreq(48), indexing="ij")))
    at_25px = spectrum[(k > 0.38) & (k < 0.42)].mean() / spectrum[(k > 0.02) & (k < 0.06)].mean()
    assert at_25px > 1e-4  # power left at 2.5 px resolution


@pytest.mark.parametrize("seed", [1, 2, 3, 11])
def test_phantom_modules_touch_without_overlapping(seed):
    """Each module's own mask holds most of its density: rigid modules that interpenetrate (as the first
    phantom's did, 64-74 % for the small one) would make every module's reference lose part of itself."""
    ph = make_phantom(64, seed)
    for volume, mask in zip(ph.module_maps, ph.masks):
        assert np.sum((volume * mask) ** 2) / np.sum(volume**2) >= 0.85


def test_a_fixed_motion_axis_turns_every_module_about_it(tmp_path):
    """motion.axis: every module's true rotation (A0ᵀ A_k) is about that axis; the other draws are those of the
    random-axis set (same seed): the consensus poses are the same."""
    (tmp_path / "fixed").mkdir()
    (tmp_path / "random").mkdir()
    fixed = simulate(tmp_path / "fixed", motion={"sigma_rot_deg": 3.0, "sigma_shift_px": 0.5, "axis": [0, 1, 1]})
    random_axis = simulate(tmp_path / "random", motion={"sigma_rot_deg": 3.0, "sigma_shift_px": 0.5})
    consensus = read_star(fixed / "particles.star")
    a0 = rotations.euler_to_matrix(consensus.rot_rad, consensus.tilt_rad, consensus.psi_rad)
    unit = np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    for k in (1, 2):
        truth = read_star(fixed / f"gt_module_{k}.star")
        q = np.swapaxes(a0, -1, -2) @ rotations.euler_to_matrix(truth.rot_rad, truth.tilt_rad, truth.psi_rad)
        vectors = rotations.rotation_vector(q)
        across = vectors - np.outer(vectors @ unit, unit)
        assert np.abs(across).max() < 1e-4 and np.rad2deg(np.abs(vectors @ unit)).max() > 2.0
    other = read_star(random_axis / "particles.star")
    np.testing.assert_allclose(other.rot_rad, consensus.rot_rad)


@pytest.mark.parametrize("axis", [[0, 0, 0], [1, 2], "x", [1, True, 0]])
def test_a_bad_motion_axis_is_one_line_naming_the_key(tmp_path, axis):
    cfg = {"output": "ds", "n_particles": 10, "box": 32, "motion": {"axis": axis}}
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "simulate", str(tmp_path / "sim.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("lorefine: error: motion.axis: expected null or three numbers")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()


def _moments(a) -> list[float]:
    """Mass, the sums of a² and a³, and the first and second moments along z, y, x: a fingerprint of a volume
    that pins it to float precision without depending on the last bit (BLAS and numpy versions differ there)."""
    a = np.asarray(a, dtype=np.float64)
    z, y, x = np.indices(a.shape)
    return [float(np.sum(a * w)) for w in (1, a, a * a, x, y, z, x * x, y * y, z * z, x * y, y * z, z * x)]


# Made with the code before K-module phantoms existed (59e8b4a^): two module maps, then their two masks.
FIRST_RELEASES = {
    (32, 11): [[106.0, 32.6800511, 13.6123854, 1875.56566, 1459.55492, 1439.99434, 33843.2828, 20687.1504,
                20347.7699, 25785.8604, 19732.8102, 25595.3607],
               [75.9999998, 23.3168939, 9.29503653, 1248.09481, 1558.21625, 1579.76689, 20963.5228, 32436.1214,
                32929.8468, 25677.7541, 32438.7592, 25940.6197],
               [5195.96528, 4015.19321, 3451.06623, 88497.4764, 70410.4006, 65751.1112, 1662058.7, 1089030.29,
                967779.276, 1189126.29, 871375.248, 1132728.07],
               [3874.27369, 2873.09602, 2399.63684, 63046.0488, 83340.1167, 82686.5008, 1134443.29, 1891273.14,
                1827775.89, 1368465.43, 1773672.16, 1344929.57]],
    (48, 3): [[387.0, 146.025512, 78.3900904, 8108.64207, 11178.5287, 8748.11759, 178939.955, 327584.903,
               201283.485, 233918.483, 252479.465, 183846.461],
              [188.0, 67.9810554, 34.4545232, 5705.25054, 2936.674, 4578.92629, 176064.721, 47587.1871, 112549.529,
               90047.5603, 71720.3523, 138672.843],
              [10022.7728, 8428.12325, 7665.36476, 209294.684, 291236.158, 226689.075, 4857658.97, 8808254.14,
               5475477.55, 6120518.47, 6585653.66, 4742443.73],
              [6537.22345, 5239.10347, 4619.5855, 201703.771, 97058.3869, 161278.613, 6486824.73, 1624286.31,
               4154284.62, 3053465.14, 2408581.25, 4959428.67]],
}


@pytest.mark.parametrize("box, seed, n_atoms", [(32, 11, [106, 76]), (48, 3, [387, 188])])
def test_the_default_phantom_is_the_one_of_the_first_releases(box, seed, n_atoms):
    """Without phantom.modules the phantom is what it was before K-module phantoms existed (moments of its
    module maps and masks made with that code): the embedded demo set and every existing config keep making
    the same files."""
    ph = make_phantom(box, seed)
    assert ph.n_atoms == n_atoms
    got = [_moments(a) for a in ph.module_maps + ph.masks]
    np.testing.assert_allclose(got, FIRST_RELEASES[(box, seed)], rtol=1e-6)


@pytest.mark.parametrize("box, seed", [(96, 11), (96, 12)])
def test_a_k_module_phantom_has_the_asked_masses_touching_modules_and_own_masks(box, seed):
    fractions = [0.57, 0.28, 0.15]
    ph = make_phantom(box, seed, mass_fractions=fractions)
    assert len(ph.module_maps) == len(ph.masks) == 3 and ph.centres_px.shape == (3, 3)
    mass = np.array([m.sum() for m in ph.module_maps])
    np.testing.assert_allclose(mass / mass.sum(), fractions, atol=0.015)
    for volume, mask in zip(ph.module_maps, ph.masks):
        assert mask.min() >= 0 and mask.max() <= 1
        assert np.sum((volume * mask) ** 2) / np.sum(volume**2) >= 0.9  # each module's own mask holds it
    # every module touches another (their dilated soft masks meet), so the complex is one piece
    overlap = np.array([[float((a * b).sum()) for b in ph.masks] for a in ph.masks])
    np.fill_diagonal(overlap, 0)
    assert (overlap.max(axis=1) > 0).all()
    # compact and inside the box: the density stays well within the box (half-width 0.5 box)
    whole = sum(ph.module_maps)
    radius = np.sqrt(((np.indices(whole.shape) - box // 2) ** 2).sum(0))
    assert radius[whole > 0.05 * whole.max()].max() < 0.4 * box
    # the centre of mass of the complex sits at the box centre
    np.testing.assert_allclose((mass[:, None] * ph.centres_px).sum(0) / mass.sum(), 0, atol=1.0)
    # detail to Nyquist: power left at 2.2 px resolution
    spectrum = np.abs(np.fft.rfftn(whole)) ** 2
    k = np.sqrt(sum(g**2 for g in np.meshgrid(np.fft.fftfreq(box), np.fft.fftfreq(box), np.fft.rfftfreq(box), indexing="ij")))
    assert spectrum[(k > 0.43) & (k < 0.47)].mean() / spectrum[(k > 0.02) & (k < 0.06)].mean() > 1e-4


def test_a_three_module_set_is_simulated_with_its_names_and_files(tmp_path):
    ds = simulate(tmp_path, phantom={"seed": 11, "modules": [0.57, 0.28, 0.15]}, n_particles=40)
    for k in (1, 2, 3):
        for name in (f"gt_module_{k}.mrc", f"gt_module_{k}.star", f"mask_module_{k}.mrc"):
            assert (ds / name).exists(), name
    config = yaml.safe_load((ds / "lorefine.yaml").read_text())
    assert [m["mask"] for m in config["modules"]] == [f"mask_module_{k}.mrc" for k in (1, 2, 3)]
    assert yaml.safe_load((ds / "dataset.yaml").read_text())["phantom"]["modules"] == [0.57, 0.28, 0.15]
    images = stack(ds / "particles.mrcs")
    total = 0
    for k in (1, 2, 3):
        truth = read_star(ds / f"gt_module_{k}.star")
        total = total + fourier.to_real(fourier.project(fourier.prepare_volume(stack(ds / f"gt_module_{k}.mrc")), truth.matrices, truth.origin_px), 32)
    np.testing.assert_allclose(total, images, atol=2e-3 * np.abs(images).max())


@pytest.mark.parametrize("phantom, message", [
    ({"modules": [0.5, 0.6]}, "phantom.modules: expected null or 2 to 20 mass fractions"),
    ({"modules": [1.0]}, "phantom.modules: expected null or 2 to 20 mass fractions"),
    ({"modules": [0.7, 0.3, 0.0]}, "phantom.modules: expected null or 2 to 20 mass fractions"),
    ({"modules": "0.5 0.5"}, "phantom.modules: expected null or 2 to 20 mass fractions"),
    ({"modules": [0.5, True]}, "phantom.modules: expected null or 2 to 20 mass fractions"),
    ({"sizes": [0.5, 0.5]}, "phantom.sizes"),
])
def test_bad_phantom_modules_are_one_line_naming_the_key(tmp_path, phantom, message):
    cfg = {"output": "ds", "n_particles": 10, "box": 32, "phantom": phantom}
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "simulate", str(tmp_path / "sim.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(f"lorefine: error: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()


def test_phantom_modules_with_a_map_source_is_refused(tmp_path):
    from lorefine_mpi.errors import InputError
    from lorefine_mpi.simulate.dataset import simulate_config_from_dict

    (tmp_path / "m1.mrc").write_bytes(b"")
    with pytest.raises(InputError, match="phantom.modules: only used with source: phantom"):
        simulate_config_from_dict({"output": "ds", "source": {"modules": ["m1.mrc", "m1.mrc"]}, "phantom": {"modules": [0.5, 0.5]}},
                                  tmp_path)


def test_the_images_do_not_depend_on_the_batch_size(tmp_path):
    """simulate() projects one module at a time into a scratch file and writes the stack with plain file I/O;
    the images are the same bits for any number of images per step (and no scratch file is left behind)."""
    from lorefine_mpi.simulate.dataset import simulate as run_simulation
    from lorefine_mpi.simulate.dataset import simulate_config_from_dict

    raw = {"seed": 4, "n_particles": 23, "box": 32, "phantom": {"seed": 11, "modules": [0.6, 0.25, 0.15]},
           "ctf": {"n_defocus_groups": 3}, "camera": {"mtf_a": 0.7}, "noise": {"snr": 0.3}}
    stacks = []
    for batch in (None, 5):
        cfg = simulate_config_from_dict(raw | {"output": f"ds{batch}"}, tmp_path)
        run_simulation(cfg, batch=batch)
        stacks.append(stack(tmp_path / f"ds{batch}" / "particles.mrcs"))
        # no scratch file is left behind (only the output policy's record of what lorefine made)
        assert sorted(p.name for p in (tmp_path / f"ds{batch}").glob(".*")) == [".lorefine-made"]
    assert stacks[0].shape == (23, 32, 32) and stacks[0].tobytes() == stacks[1].tobytes()
