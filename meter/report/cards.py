"""Entry points: render cards from run directories, write them next to a model."""

from __future__ import annotations

import os
from typing import Any

from . import render as R
from .model import build


def render_paths(dirs, *, fmt: str = "md", compare: str | None = None, live: bool = True, **kw: Any):
    """Render the runs under ``dirs`` in ``fmt`` (md, json, latex, climate, hf, html). With
    ``compare``, a baseline run directory, the comparison is appended (md, json, html)."""
    card = build(dirs, live=live)
    comparison = None
    if compare:
        from .analysis import compare as cmp

        base = build(compare, live=live)
        comparison = cmp(base["runs"][0], card["runs"][0])
        card["comparison"] = comparison
    if fmt == "md":
        text = R.markdown(card)
        if comparison:
            text += "\n" + comparison_markdown(comparison)
        return text
    if fmt == "json":
        return R.to_json(card)
    if fmt == "latex":
        return R.latex(card)
    if fmt == "climate":
        return R.climate_markdown(card, **kw)
    if fmt == "hf":
        from .hf import render

        return render(card, **kw)
    if fmt == "html":
        from ..runlog import find_runs, read_run
        from .html import render

        runs = [read_run(d) for d in find_runs(dirs)]
        return render(card, runs)
    raise ValueError(f"unknown format {fmt!r}")


def comparison_markdown(c: dict) -> str:
    f = R.fmt
    out = ["# Comparison with the baseline", "",
           "| stage | baseline s | candidate s | speedup | baseline J | candidate J | energy saved J | gCO2eq saved |",
           "|---|---|---|---|---|---|---|---|"]
    for r in c["stages"]:
        out.append(f"| {r['path']} | {f(r['baseline_duration_s'])} | {f(r['candidate_duration_s'])} | {f(r['speedup'])} | "
                   f"{f(r['baseline_energy_j'])} | {f(r['candidate_energy_j'])} | {f(r['saved_energy_j'])} | {f(r['saved_emissions_g'])} |")
    for label, t in c["totals"].items():
        out.append(f"\nTotal {label.replace('_', ' ')}: speedup {f(t['speedup'])}, energy saved {f(t['energy_saved_j'])} J, "
                   f"{f(t['emissions_saved_g'])} gCO2eq.")
    be = c["break_even_runs"]
    out.append(f"\nPreparation energy (one-time overhead): baseline {f(c['preparation_energy_j']['baseline'])} J, "
               f"candidate {f(c['preparation_energy_j']['candidate'])} J; "
               + ("break-even after " + f(be) + " run(s)." if be is not None else "the candidate never pays its preparation back."))
    return "\n".join(out) + "\n"


def write_cards(run_dir: str, output_dir: str, *, live: bool = True) -> list[str]:
    """Write ``efficiency_card.md``, ``efficiency_card.json`` and ``climate_card.md`` for the run
    into ``output_dir``. Returns the paths."""
    card = build(run_dir, live=live)
    os.makedirs(output_dir, exist_ok=True)
    out = []
    for name, text in (("efficiency_card.md", R.markdown(card)), ("efficiency_card.json", R.to_json(card)),
                       ("climate_card.md", R.climate_markdown(card))):
        path = os.path.join(output_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        out.append(path)
    return out
