"""The report of a finished run: its header says what the run ran on and how, it has the resolution of every iteration
and, per module, the sections of the consensus and the refined map; a real browser (headless Chromium, skipped with the
reason where it is not installed; CI installs it) draws the page and, pixel for pixel, the sections."""

import base64
import html
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from runs import make_run, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    config = make_run(folder, n_particles=40, source="recon_ctf", score={"mode": "subtract", "ctf": True}, iterations=2,
                      postprocess={"enabled": True, "local_resolution": False})
    done = run("refine", config)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out" / "report.html"


def images(page: str) -> dict:
    """{alt text: PNG bytes} of the page's embedded images."""
    return {html.unescape(alt): base64.b64decode(data) for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)}


def test_the_header_the_iterations_and_the_maps_are_in_the_page(report):
    page = report.read_text()
    assert "<b>Data</b>: 40 particles, box 48 px at 4.000 Å/px (192 Å), 1 optics group, CTF used." in page
    assert "<b>Run</b>: 2 of 2 iterations, stopped as configured (iterations: 2); 1 rank (1 attempt: started" in page
    assert "CPU hours (" in page and "wall time" in page
    table = page[page.index("<h2>Resolution by iteration</h2>"):]
    assert "<th>consensus</th><th>iteration 1</th><th>iteration 2</th>" in table[:table.index("</tr>")]
    maps = [alt for alt in images(page) if "sections through the module's centre of mass" in alt]
    assert [alt.split(":")[0] for alt in maps] == ["large", "small"]
    assert "http://" not in page and "https://" not in page and "<script" not in page  # one self-contained file


def screenshot(tmp_path, html_path, width, height):
    png = tmp_path / f"{html_path.stem}.png"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                           f"--screenshot={png}", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.exists(), done.stderr[-2000:]
    import matplotlib.image

    return matplotlib.image.imread(png)[..., :3]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_browser_draws_the_page_and_the_sections(report, tmp_path):
    import matplotlib.image

    page = screenshot(tmp_path, report, 1280, 2400)
    assert page.shape[:2] == (2400, 1280)
    ink = (page.mean(axis=2) < 0.5).mean()
    assert 0.01 < ink < 0.6  # text, tables and figures on a white page
    for alt, png in images(report.read_text()).items():
        if "sections through the module's centre of mass" not in alt:
            continue
        expected = matplotlib.image.imread(io.BytesIO(png))[..., :3]
        height, width = expected.shape[:2]
        alone = tmp_path / f"{alt.split(':')[0]}_maps.html"  # the figure alone, at its own size, as the report embeds it
        alone.write_text(f'<!DOCTYPE html><html><body style="margin:0"><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                         f'style="display:block;width:{width}px;height:{height}px"></body></html>')
        drawn = screenshot(tmp_path, alone, width, height)
        assert drawn.shape == expected.shape
        assert np.abs(drawn - expected).max() < 0.02  # every pixel of the sections as lorefine drew them
        grey = np.abs(expected - expected.mean(axis=2, keepdims=True)).max(axis=2) < 1e-3
        assert np.unique(np.round(expected[grey].mean(axis=1), 2)).size > 50  # a grey-scale image, not an empty frame
