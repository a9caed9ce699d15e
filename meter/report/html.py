"""One self-contained HTML file: the card's tables and its plots embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io

from .render import LEGEND, STAGE_HEAD, climate_rows, fmt, intensity_text, location_text, stage_rows

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.nested{color:#555}tr.hl{background:#fff6d5}img{max-width:100%}.meta td{text-align:left}.small{font-size:.8rem;color:#555}
"""

JS = """
document.querySelectorAll('table.stages tbody tr').forEach(function (tr) {
  tr.addEventListener('mouseenter', function () { tr.classList.add('hl'); });
  tr.addEventListener('mouseleave', function () { tr.classList.remove('hl'); });
});
document.getElementById('stage-count').textContent = document.querySelectorAll('table.stages tbody tr').length;
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(head, rows, cls="") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = []
    for r, depth in rows:
        cells = "".join(f"<td>{c if i == 0 else html.escape(c)}</td>" for i, c in enumerate(r))
        body.append(f'<tr class="{"nested" if depth else ""}">{cells}</tr>')
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render(card: dict, runs=(), *, extra_figures=()) -> str:
    """HTML for the card; ``runs`` (meter.runlog.Run objects, same order) add power timelines;
    ``extra_figures`` are (title, matplotlib Figure) pairs, e.g. a Pareto plot."""
    from . import plots

    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>meter efficiency report</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>Efficiency report</h1><p class=\"small\">{html.escape(card['generated_by'])}; "
             f"<span id=\"stage-count\">0</span> stages in {len(card['runs'])} run(s).</p>"]
    for k, run in enumerate(card["runs"]):
        t = run["totals"]
        parts.append(f"<h2>Run {html.escape(run['run_name'] or run['run_id'])}</h2>")
        meta = [(["Run", run["run_id"]], 0), (["Hardware", run["hardware"]["summary"]], 0),
                (["Location and grid", f"{location_text(run)}: {intensity_text(run)}"], 0), (["PUE", fmt(run["pue"])], 0),
                (["Energy", f"{fmt(t['energy_kwh'])} kWh IT, {fmt(t['facility_energy_kwh'])} kWh facility"], 0),
                (["Emissions", f"{fmt(t['emissions_g'])} gCO2eq"], 0)]
        parts.append(_table(["", ""], [([html.escape(a), b], d) for (a, b), d in meta], "meta"))
        rows = [(r, s["depth"]) for r, s in zip(stage_rows(run), run["stages"], strict=True)]
        parts.append(_table(STAGE_HEAD, rows, "stages"))
        parts.append(f"<p class=\"small\">{html.escape(LEGEND.replace('**', ''))}</p>")
        if k < len(runs):
            parts.append(f"<h3>Power</h3><img alt=\"power timeline of {html.escape(run['run_id'])}\" src=\"{_png(plots.power_timeline(runs[k], run))}\">")
        parts.append(f"<h3>Energy by stage</h3><img alt=\"energy by stage\" src=\"{_png(plots.stage_energy_bars(run))}\">")
        if run["unavailable"]:
            parts.append("<h3>Sensors not used</h3><ul>" + "".join(
                f"<li>{html.escape(u['sensor'])}: {html.escape(u['reason'])}. {html.escape(u.get('hint') or '')}</li>" for u in run["unavailable"]) + "</ul>")
    parts.append("<h2>Climate performance model card</h2>")
    parts.append(_table(["Question", "Answer"], [([html.escape(q), a], 0) for q, a in climate_rows(card)], "meta"))
    for title, fig in extra_figures:
        parts.append(f"<h2>{html.escape(title)}</h2><img alt=\"{html.escape(title)}\" src=\"{_png(fig)}\">")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)
