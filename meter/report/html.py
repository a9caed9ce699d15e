"""One self-contained HTML file: the card's tables and its plots embedded as PNG data URIs.

Several runs: a sweep overview first (one row per run, the Pareto frontier, the baseline
comparison and the plots), then each run's detail."""

from __future__ import annotations

import base64
import hashlib
import io

from .escape import html_text
from .render import (
    LEGEND,
    SENSORS_TITLE,
    climate_rows,
    fmt,
    intensity_text,
    location_text,
    overview_notes,
    overview_table,
    sensor_lines,
    stage_head,
    stage_rows,
)


class Html(str):
    """Markup built here from escaped parts: inserted as is. Any other string is text."""


def esc(value) -> str:
    return value if isinstance(value, Html) else html_text(value)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1280px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}h3{font-size:1rem;margin-top:1.4rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5rem 0;font-size:.82rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.meta td{text-align:left;white-space:normal}
tr.nested{color:#555}tr.hl{background:#fff6d5}tr.pareto td{font-weight:600}tr.baseline td:first-child{color:#1b7a5a}
img{max-width:100%}.small{font-size:.8rem;color:#555}.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0}.plots img{max-width:600px}
nav a{margin-right:.6rem}
"""

JS = """
document.querySelectorAll('table.stages tbody tr').forEach(function (tr) {
  tr.addEventListener('mouseenter', function () { tr.classList.add('hl'); });
  tr.addEventListener('mouseleave', function () { tr.classList.remove('hl'); });
});
document.getElementById('stage-count').textContent = document.querySelectorAll('table.stages tbody tr').length;
"""

# Defence in depth behind the escaping: only this page's own script runs, images only from
# data: URIs (no beacon can call out), no form, frame, plugin or base URL.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       f"script-src 'sha256-{base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()}'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _png(fig) -> str:
    from .plots import plain_text

    buf = io.BytesIO()
    with plain_text():
        fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(head, rows, cls="", row_classes=None) -> str:
    """``rows``: lists of cells; every cell is text (escaped) unless it is :class:`Html`."""
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = []
    for k, r in enumerate(rows):
        cells = "".join(f"<td>{esc(c)}</td>" for c in r)
        rc = row_classes[k] if row_classes else ""
        body.append(f'<tr class="{rc}">{cells}</tr>')
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _legend(k: int) -> str:
    text = html_text(LEGEND.replace("**", ""))
    return text.replace(html_text(SENSORS_TITLE), f'<a href="#sensors-{k}">{html_text(SENSORS_TITLE)}</a>', 1)


def _overview(card: dict) -> list[str]:
    from . import plots

    sw = card["sweep"]
    head, rows, _ = overview_table(card)
    classes = [" ".join(c for c in ("pareto" if r["pareto"] else "", "baseline" if r["is_baseline"] else "") if c)
               for r in sw["rows"]]
    rows = [[Html(f'<a href="#run-{k}">{html_text(r[0])}</a>'), *r[1:]] for k, r in enumerate(rows)]
    out = [f'<h2 id="overview">Overview: {len(card["runs"])} runs</h2>', _table(head, rows, "overview", classes)]
    out += [f'<p class="small">{html_text(n)}</p>' for n in overview_notes(card)]
    figs = []
    if sw["metric"]:
        figs.append((f"Pareto frontier: {sw['metric']} against energy", plots.sweep_pareto(card)))
    figs.append(("Energy per run by component", plots.sweep_energy_bars(card)))
    out.append('<div class="plots">' + "".join(
        f'<figure><img alt="{html_text(t)}" src="{_png(f)}"><figcaption class="small">{html_text(t)}</figcaption></figure>'
        for t, f in figs) + "</div>")
    return out


def _run_section(card: dict, run: dict, k: int, samples_run, level: str) -> list[str]:
    from . import plots

    t = run["totals"]
    sub = "h3" if level == "h2" else "h2"
    out = [f'<{level} id="run-{k}">Run {html_text(run.get("title") or run["run_name"] or run["run_id"])}</{level}>']
    meta = [["Run", run["run_id"]], ["Hardware", run["hardware"]["summary"]],
            ["Location and grid", f"{location_text(run)}: {intensity_text(run)}"], ["PUE", fmt(run["pue"])],
            ["Energy", f"{fmt(t['energy_kwh'])} kWh IT, {fmt(t['facility_energy_kwh'])} kWh facility"],
            ["Emissions", f"{fmt(t['emissions_g'])} gCO2eq"],
            ["Time", f"{fmt(t['stage_time_s'])} s in top-level stages; {fmt(t['wall_time_s'])} s wall"]]
    out.append(_table(["", ""], meta, "meta"))
    out.append(_table(stage_head(run), stage_rows(run), "stages", ["nested" if s["depth"] else "" for s in run["stages"]]))
    out.append(f'<p class="small">{_legend(k)}</p>')
    if samples_run is not None:
        out.append(f'<{sub}>Power</{sub}><img alt="power timeline of {html_text(run["run_id"])}" '
                   f'src="{_png(plots.power_timeline(samples_run, run))}">')
    out.append(f'<{sub}>Energy by stage</{sub}><img alt="energy by stage" src="{_png(plots.stage_energy_bars(run))}">')
    out.append(f'<{sub} id="sensors-{k}">{SENSORS_TITLE}</{sub}><ul class="small">'
               + "".join(f"<li>{html_text(line)}</li>" for line in sensor_lines(run)) + "</ul>")
    return out


def comparison_html(c: dict) -> list[str]:
    """The stage-by-stage comparison (``--compare``) as a table and its conclusions."""
    from .render import comparison_lines

    head, rows, notes = comparison_lines(c)
    return ['<h2 id="comparison">Comparison with the baseline</h2>', _table(head, rows, "compare")] + [
        f'<p class="small">{html_text(n)}</p>' for n in notes]


def render(card: dict, runs=(), *, extra_figures=()) -> str:
    """HTML for the card; ``runs`` (meter.runlog.Run objects, same order) add power timelines;
    ``extra_figures`` are (title, matplotlib Figure) pairs appended at the end."""
    sweep = len(card["runs"]) > 1 and "sweep" in card
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">", f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             "<title>meter efficiency report</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{'Sweep report' if sweep else 'Efficiency report'}</h1><p class=\"small\">{html_text(card['generated_by'])}; "
             f"<span id=\"stage-count\">0</span> stages in {len(card['runs'])} run(s).</p>"]
    if sweep:
        parts.append("<nav class=\"small\">Runs: " + "".join(
            f'<a href="#run-{k}">{html_text(r["title"])}</a>' for k, r in enumerate(card["runs"])) + "</nav>")
        parts += _overview(card)
    if card.get("comparison"):
        parts += comparison_html(card["comparison"])
    for k, run in enumerate(card["runs"]):
        parts += _run_section(card, run, k, runs[k] if k < len(runs) else None, "h2")
    parts.append("<h2>Climate performance model card</h2>")
    parts.append(_table(["Question", "Answer"], [[q, a] for q, a in climate_rows(card)], "meta"))
    for title, fig in extra_figures:
        parts.append(f"<h2>{html_text(title)}</h2><img alt=\"{html_text(title)}\" src=\"{_png(fig)}\">")
    probs = card.get("problems") or []
    if probs:
        parts.append(f'<h2 id="problems">Problems reading the run logs</h2><p class="small">{len(probs)} problem(s); the '
                     'records named were skipped and the figures above exclude them.</p><ul class="small">'
                     + "".join(f"<li>{html_text(p)}</li>" for p in probs) + "</ul>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)
