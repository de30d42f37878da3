"""``report.html``: one self-contained page (images embedded as data URIs, no scripts, no links out) built
from what a run wrote into its output folder, so ``lorefine report OUT/`` can rebuild it at any time.

Sections: what the run ran on and how (particles, box, pixel size, optics groups, CTF, iterations and why it stopped,
ranks of every attempt, CPU hours, wall time); the summary table (per module: masked FSC 0.143 resolution of the
consensus and of the refined map, B-factor, local resolution, median pose change); the resolution of every iteration;
per module sections through the consensus and the refined map side by side on one grey scale (drawn here from the
maps, `report.figures`), the FSC before/after, the post-processing FSC and Guinier plots, the local-resolution
histogram and slices, the pose-change histograms and any warnings; the motion analysis (relative motion, principal
components, the maps along them); timings (CPU per stage from results.h5, wall time of the end-of-run steps); the
config. A section whose files are missing (local resolution off, one module) is left out.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import yaml

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import results
from lorefine_mpi.io.star import atomic_write_text
from lorefine_mpi.refine import layout

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { margin-bottom: 0.3em; } .meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
.figures figure { margin: 0; max-width: 590px; } .figures figure.wide { max-width: 100%; }
.figures img { width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 700px; }
.facts { margin: 0.3em 0; } .warning { color: #a40; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _image(path: Path, caption: str, wide: bool = False) -> str:
    """A figure with the PNG at ``path`` embedded (empty when the file is missing); wide: the full page width."""
    if not path.is_file():
        return ""
    return _figure(path.read_bytes(), caption, wide)


def _figure(png: bytes, caption: str, wide: bool = False) -> str:
    """A figure with the PNG bytes embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    attribute = ' class="wide"' if wide else ""
    return (f'<figure{attribute}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _number(value, fmt: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


def _bfactor(value, source, say_source: bool = False) -> str:
    """A B-factor for the page: ``not estimated (none applied)`` when the Guinier fit had too few shells."""
    if source == "not estimated":
        return "not estimated (none applied)"
    return _number(value, ".0f", " Å²") + (f" ({html.escape(source)})" if say_source and source else "")


def module_names(config: dict) -> list[str]:
    """The module names of a resolved config (``whole`` for conventional refinement)."""
    modules = config.get("modules")
    if modules == "whole":
        return ["whole"]
    if isinstance(modules, list):
        return [str(m.get("name")) for m in modules if isinstance(m, dict)]
    return []


def build_report(out) -> str:
    """The page's HTML for the output folder ``out``."""
    out = Path(out)
    config_path = out / layout.CONFIG
    if not out.is_dir():
        raise InputError(f"{out}: not a folder; expected a lorefine refine output folder")
    if not config_path.is_file():
        raise InputError(f"{out}: no config.yaml; expected a lorefine refine output folder")
    config_text = config_path.read_text()
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        raise InputError(f"{config_path}: cannot read it as YAML") from None
    names = module_names(config)
    iterations = config.get("iterations", 1) if isinstance(config, dict) else 1
    if not isinstance(iterations, int):  # iterations: auto: the last one, as results.h5 records it once they settled
        from lorefine_mpi.io.results import final_iteration

        iterations = final_iteration(out / "results.h5") or 1
    folder = layout.RunFolder(out, iterations)
    summary = _json(folder.summary) or {"modules": {}}
    timings = _json(folder.timings) or {}
    motion = _json(folder.motion_folder / "motion.json")
    meta = _run_metadata(out)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lorefine report: {html.escape(out.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>lorefine report: {html.escape(str(out))}</h1>",
             f"<p class=\"meta\">{html.escape(meta)}</p>"]
    parts.append(_run_facts(out, summary, timings))
    parts.append(_summary_table(names, summary))
    parts.append(_iterations_table(folder, names))
    for name in names:
        parts.append(_module_section(folder, name, summary["modules"].get(name, {})))
    parts.append(_motion_section(out, motion))
    parts.append(_timings_section(out, timings))
    parts.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _run_metadata(out: Path) -> str:
    bits = [f"written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"]
    record = results.run_record(out / layout.RESULTS)
    if record:
        bits += [f"lorefine {record['lorefine_version']}", f"command: {record['command_line']}"]
    return "; ".join(bits)


def _run_facts(out: Path, summary: dict, timings: dict) -> str:
    """The header's facts: the data and the run (`refine.finish.dataset_facts`, results.h5's attempts and CPU time)."""
    data = summary.get("dataset") or {}
    lines = []
    if data:
        optics = data["optics_groups"]
        ctf = "used" if data["ctf"] else ("in the STAR file, not used (score.ctf: false)" if data["ctf_in_star"] else "none in the STAR file")
        lines.append(f"<b>Data</b>: {data['particles']:,} particles, box {data['box_px']} px at {data['pixel_size_angstrom']:.3f} Å/px "
                     f"({data['box_px'] * data['pixel_size_angstrom']:.0f} Å), {optics} optics group{'s' if optics != 1 else ''}, CTF {ctf}.")
    record = results.run_record(out / layout.RESULTS)
    cpu = results.stage_cpu_seconds(out / layout.RESULTS)
    run = []
    if data:
        done = len({stage.split('/')[0] for stage in cpu})
        run.append(f"{done} of {data['iterations']} iteration{'s' if data['iterations'] != 1 else ''}, stopped {html.escape(data['stopped_because'])}")
    attempts = record.get("attempts", []) if record else []
    if attempts:
        ranks = [a["ranks"] for a in attempts]
        said = f"{ranks[0]} rank{'s' if ranks[0] != 1 else ''}" if len(set(ranks)) == 1 else "ranks " + ", ".join(str(r) for r in ranks)
        run.append(f"{said} ({len(attempts)} attempt{'s' if len(attempts) != 1 else ''}: started {html.escape(attempts[0]['started'])}"
                   + (f", last resumed {html.escape(attempts[-1]['started'])}" if len(attempts) > 1 else "") + ")")
    if cpu:
        seconds = sum(sum(parts.values()) for parts in cpu.values())
        run.append(f"{seconds / 3600.0:.2g} CPU hours ({seconds:,.0f} s) in the refinement stages (search, reconstruction, writing; all ranks)")
    if "refinement_s" in timings:
        run.append(f"wall time {timings['refinement_s'] + timings.get('finish_total_s', 0.0):.0f} s (the last attempt, with the end-of-run analysis)")
    if run:
        lines.append("<b>Run</b>: " + "; ".join(run) + ".")
    return "".join(f"<p class=\"facts\">{line}</p>" for line in lines)


def _resolution_of(path: Path, key: str | None = None):
    """The masked FSC 0.143 resolution (Å, RELION's read-out) in an fsc.json-like file (None when missing)."""
    data = _json(path)
    if not data:
        return None
    curve = data.get(key) if key else next(iter(data.values()), None)
    return None if not isinstance(curve, dict) else curve.get("resolution_fsc_0.143_angstrom")


def _iterations_table(run: layout.RunFolder, names) -> str:
    """Per module the masked FSC 0.143 resolution of the consensus half maps and of each iteration's half maps."""
    its = list(range(1, run.iterations + 1))
    rows = []
    for name in names:
        cells = [_resolution_of(run.module_folder(name) / "fsc_consensus.json")]
        cells += [_resolution_of(run.module_folder(name, it) / "fsc.json") for it in its]
        if all(c is None for c in cells):
            continue
        rows.append(f"<tr><td class=\"name\">{html.escape(name)}</td>" + "".join(f"<td>{_number(c, '.2f', ' Å')}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "<th>module</th><th>consensus</th>" + "".join(f"<th>iteration {it}</th>" for it in its)
    return (f"<h2>Resolution by iteration</h2><table><tr>{head}</tr>" + "".join(rows) + "</table>"
            "<p class=\"meta\">Masked, corrected gold-standard FSC 0.143 of each iteration's half maps in the module's mask "
            "(each module folder's <code>fsc.json</code>; earlier iterations in <code>iteration_NN/</code>).</p>")


def _maps_figure(run: layout.RunFolder, name: str) -> str:
    """The module before (the consensus poses' half maps, averaged) and after (its refined map), masked by its mask, as
    sections on one grey scale; empty when a map is missing."""
    from lorefine_mpi.io import mrc
    from lorefine_mpi.report.figures import before_after_png

    module = run.module_folder(name)
    paths = [run.consensus_half(1), run.consensus_half(2), module.map, module.mask]
    if not all(p.is_file() for p in paths):
        return ""
    try:
        (h1, voxel), (h2, _), (after, _), (mask, _) = (mrc.read_map(p) for p in paths)
    except (OSError, ValueError):
        return ""
    if not (h1.shape == h2.shape == after.shape == mask.shape):
        return ""
    before = 0.5 * (h1 + h2) * mask
    png = before_after_png(before, after, mask, voxel, labels=("consensus poses", "refined"), title=f"{name}: the module before and after")
    caption = (f"{name}: sections through the module's centre of mass; above, the half maps of the consensus poses (averaged); below, "
               "the module refined (map.mrc); both masked by the module's mask, unsharpened, on one grey scale")
    return _figure(png, caption, wide=True)


def _summary_table(names, summary) -> str:
    rows = []
    for name in names:
        m = summary["modules"].get(name, {})
        rows.append(
            f"<tr><td class=\"name\">{html.escape(name)}</td><td>{_number(m.get('resolution_before_angstrom'), '.2f', ' Å')}</td>"
            f"<td>{_number(m.get('resolution_after_angstrom'), '.2f', ' Å')}</td><td>{_bfactor(m.get('bfactor_angstrom2'), m.get('bfactor_source'))}</td>"
            f"<td>{_number(m.get('locres_median_angstrom'), '.2f', ' Å')}</td>"
            f"<td>{_number(m.get('median_pose_change_deg'), '.2f', '°')} / {_number(m.get('median_pose_change_angstrom'), '.2f', ' Å')}</td></tr>")
    return ("<h2>Summary</h2><table><tr><th>module</th><th>consensus (before)</th><th>refined (after)</th><th>B-factor</th>"
            "<th>local resolution (median)</th><th>median pose change</th></tr>" + "".join(rows) + "</table>"
            "<p class=\"meta\">Resolution: the masked, phase-randomisation-corrected gold-standard FSC at 0.143 inside the "
            "module's mask, read as relion_postprocess does (the last shell above 0.143). Before: half maps reconstructed "
            "from the consensus poses; after: the module's refined half maps.</p>")


def _module_section(run: layout.RunFolder, name: str, m: dict) -> str:
    folder = run.module_folder(name).path
    post = _json(folder / "postprocess.json") or {}
    locres = _json(folder / "locres.json") or {}
    lines = [f"<h2>Module {html.escape(name)}</h2>"]
    if post:
        lines.append(f"<p>Post-processed: {post['resolution_angstrom']:.2f} Å (FSC 0.143; interpolated crossing "
                     f"{post['resolution_interpolated_angstrom']:.2f} Å), B-factor {_bfactor(post['bfactor_angstrom2'], post['bfactor_source'], True)}, "
                     f"low-pass {post['lowpass_angstrom']:.2f} Å. "
                     f"Maps: <code>{html.escape(name)}/postprocess.mrc</code>, <code>postprocess_masked.mrc</code>.</p>")
        lines += [f"<p class=\"warning\">warning: {html.escape(w)}</p>" for w in post.get("warnings", [])]
    maps = _maps_figure(run, name)
    if maps:
        lines.append("<div class=\"figures\">" + maps + "</div>")
    fsc_figure = folder / ("fsc_before_after.png" if (folder / "fsc_before_after.png").is_file() else "fsc.png")
    lines.append("<div class=\"figures\">" + _image(fsc_figure, "gold-standard FSC in the module's mask: consensus and refined half maps")
                 + _image(folder / "postprocess_fsc.png", "post-processing: corrected, unmasked, masked and phase-randomised FSC")
                 + _image(folder / "postprocess_guinier.png", "Guinier plot and the B-factor fit") + "</div>")
    if locres:
        median = locres.get("median_angstrom")
        lines.append(f"<h3>Local resolution</h3><p>Median in the mask {_number(median, '.2f', ' Å')}; "
                     f"{locres.get('centres', 0)} windows of {locres.get('window_box_px', 0)} px "
                     f"(flat radius {locres['settings']['radius_angstrom']:g} Å, edge {locres['settings']['edge_angstrom']:g} Å, "
                     f"step {locres['settings']['step_angstrom']:g} Å). Map: <code>{html.escape(name)}/locres.mrc</code>.</p>")
        lines.append("<div class=\"figures\">" + _image(folder / "locres_histogram.png", "local resolution inside the mask")
                     + _image(folder / "locres_slices.png", "slices through the module: density (grey), local resolution (colour)", wide=True) + "</div>")
    if (folder / "uncertainty.png").is_file():
        lines.append("<h3>Pose uncertainty</h3><div class=\"figures\">"
                     + _image(folder / "uncertainty.png", "each particle's posterior spread of this module's rotation and shift "
                              "(particles.star: rlnLorefineAngleSpread, rlnLorefineShiftSpreadAngst)", wide=True)
                     + "</div>")
    if (folder / "pose_change.png").is_file():
        lines.append("<h3>Pose change</h3><div class=\"figures\">"
                     + _image(folder / "pose_change.png", "each particle's rotation and shift of this module away from its consensus pose", wide=True)
                     + "</div>")
    return "\n".join(lines)


def _motion_section(out: Path, motion) -> str:
    if not motion:
        return ""
    lines = ["<h2>Motion of the modules</h2>"]
    pairs = motion.get("pairs", {})
    if pairs:
        rows = "".join(f"<tr><td class=\"name\">{html.escape(k.replace('_vs_', ' relative to '))}</td>"
                       f"<td>{v['median_angle_deg']:.2f}°</td><td>{v['median_shift_angstrom']:.2f} Å</td></tr>" for k, v in pairs.items())
        lines.append("<table><tr><th>pair</th><th>median relative rotation</th><th>median relative shift</th></tr>" + rows + "</table>")
    pca = motion.get("pca", {})
    explained = pca.get("variance_explained", [])
    if explained:
        rows = "".join(f"<tr><td class=\"name\">PC{i + 1}</td><td>{100 * v:.1f} %</td><td>{100 * sum(explained[: i + 1]):.1f} %</td></tr>"
                       for i, v in enumerate(explained))
        lines.append("<h3>Principal components of the relative motion</h3><table><tr><th>component</th><th>variance explained</th>"
                     "<th>cumulative</th></tr>" + rows + "</table>")
        frames = sorted(p.name for p in (out / layout.MOTION_FOLDER).glob("pc*_frame*.mrc"))
        if frames:
            lines.append(f"<p>Maps of the complex moved along the components (−2σ … +2σ): <code>motion/{html.escape(frames[0])}</code> … "
                         f"<code>{html.escape(frames[-1])}</code>; in ChimeraX, open one component's frames as a volume series "
                         "(<code>open motion/pc1_frame*.mrc vseries true</code>) and play it.</p>")
    lines.append("<div class=\"figures\">" + _image(out / layout.MOTION_FOLDER / "relative_motion.png", "relative motion of the modules", wide=True)
                 + _image(out / layout.MOTION_FOLDER / "pca.png", "variance explained, scores on the first two components, loadings of the first", wide=True)
                 + "</div>")
    lines.append("<p class=\"meta\">Per particle values: <code>motion/motion.csv</code> (one row per particle, STAR order) and "
                 "<code>results.h5</code> (/motion).</p>")
    return "\n".join(lines)


def _timings_section(out: Path, timings: dict) -> str:
    rows = [f"<tr><td class=\"name\">{html.escape(stage)}: {html.escape(part)}</td><td>{seconds:.1f} s CPU (all ranks)</td></tr>"
            for stage, parts in results.stage_cpu_seconds(out / layout.RESULTS).items() for part, seconds in parts.items()]
    labels = {"refinement_s": "refinement (this run, to the last iteration)", "consensus_half_maps_s": "consensus half maps",
              "postprocess_s": "post-processing", "local_resolution_s": "local resolution", "motion_s": "motion analysis",
              "finish_total_s": "after the last iteration, total"}
    rows += [f"<tr><td class=\"name\">{labels.get(k, html.escape(k))}</td><td>{v:.1f} s wall</td></tr>" for k, v in timings.items()]
    if not rows:
        return ""
    return "<h2>Timings</h2><table><tr><th>step</th><th>time</th></tr>" + "".join(rows) + "</table>"


def write_report(out) -> Path:
    """Write ``OUT/report.html`` (temporary name, then rename) and return its path."""
    out = Path(out)
    page = build_report(out)
    path = out / layout.REPORT
    atomic_write_text(path, page)
    return path
