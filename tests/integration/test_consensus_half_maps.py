"""`consensus_half_maps`: the consensus's own half maps (RELION Refine3D's) used instead of reconstructed."""

import mrcfile
import numpy as np
from runs import edit_config, edit_star, make_run, run


def same_map(a, b) -> bool:
    """The same voxels (the headers differ in their creation time)."""
    with mrcfile.open(a) as m, mrcfile.open(b) as n:
        return np.array_equal(m.data, n.data) and m.voxel_size == n.voxel_size


def test_given_half_maps_equal_to_the_reconstructed_ones_give_the_same_run(tmp_path):
    """A run given, as consensus_half_maps, the very half maps another run reconstructed from the same consensus
    poses and half sets ends with the same poses and maps, and says it used them instead of reconstructing."""
    outputs = {}
    for name in ("reconstructed", "given"):
        config = make_run(tmp_path / name)
        edit_star(tmp_path / name / "particles.star", "rlnRandomSubset", {i: str(1 + i % 2) for i in range(24)})
        if name == "given":
            first = tmp_path / "reconstructed" / "out" / "consensus"
            edit_config(config, lambda c: c.update(consensus_half_maps=[str(first / "half1.mrc"), str(first / "half2.mrc")]))
        done = run("refine", config)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = tmp_path / name / "out"
    log = (outputs["given"] / "lorefine.log").read_text()
    assert "consensus half maps as given" in log and "consensus half maps: back-projection" not in log
    for module in ("large", "small"):
        assert (outputs["given"] / module / "particles.star").read_text() == (outputs["reconstructed"] / module / "particles.star").read_text()
        for file in ("map.mrc", "half1.mrc", "half2.mrc"):
            assert same_map(outputs["given"] / module / file, outputs["reconstructed"] / module / file), (module, file)
    for h in ("half1.mrc", "half2.mrc"):
        assert same_map(outputs["given"] / "consensus" / h, outputs["reconstructed"] / "consensus" / h)
