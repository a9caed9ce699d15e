"""Entry points: render cards from run directories, write them next to a model, show them in a
notebook (:class:`Report`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from . import render as R
from .escape import html_text
from .model import build

FORMATS = ("md", "json", "html", "hf", "latex", "climate")
COMPARE_FORMATS = ("md", "json", "html")


def _card(dirs, *, compare: str | None, live: bool, metric: str | None, baseline: str | None, maximize: bool) -> dict:
    card = build(dirs, live=live, metric=metric, baseline=baseline, maximize=maximize)
    if not card["runs"]:
        raise ConfigError(f"no run found under {', '.join(map(str, dirs)) if isinstance(dirs, (list, tuple)) else dirs}; "
                          "give run directories (holding run.json) or the output directory that holds them")
    if compare:
        from .analysis import compare as cmp

        base = build(compare, live=live)
        if not base["runs"]:
            raise ConfigError(f"--compare {compare}: no run found there; give the baseline's run directory")
        card["comparison"] = cmp(base["runs"][0], card["runs"][0])
    return card


def render_paths(dirs, *, fmt: str = "md", compare: str | None = None, live: bool = True, metric: str | None = None,
                 baseline: str | None = None, maximize: bool = True, **kw: Any):
    """Render the runs under ``dirs`` in ``fmt`` (md, json, latex, climate, hf, html). With
    ``compare``, a baseline run directory, the stage-by-stage comparison of the first run with it
    is included (md, json, html; the other formats refuse it). ``metric``, ``baseline`` and
    ``maximize`` shape the overview of several runs (see :func:`meter.report.sweep.overview`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if compare and fmt not in COMPARE_FORMATS:
        raise ConfigError(f"--compare works with --format {', '.join(COMPARE_FORMATS)}; the {fmt} card describes one model. "
                          f"Render the comparison with --format md or html")
    card = _card(dirs, compare=compare, live=live, metric=metric, baseline=baseline, maximize=maximize)
    if fmt == "md":
        text = R.markdown(card)
        if card.get("comparison"):
            text += "\n" + comparison_markdown(card["comparison"])
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
    from ..runread import read_runs
    from .html import render

    return render(card, read_runs(dirs))


def update_hf_card(dirs, readme_path: str, *, training_type: str = "fine-tuning", live: bool = True, **opts: Any) -> str:
    """Merge the runs' ``co2_eq_emissions`` and efficiency section into the model card at
    ``readme_path`` (created if missing; every other key and the rest of the text kept)."""
    from .hf import update_model_card

    unknown = set(opts) - {"compare", "metric", "baseline", "maximize"}
    if unknown:
        from ..config import suggest

        k = sorted(unknown)[0]
        raise ConfigError(f"update_hf_card() got an unknown argument {k!r}{suggest(k, ('metric', 'baseline', 'maximize'))}")
    if os.path.isdir(readme_path):
        raise ConfigError(f"readme_path={readme_path!r} is a directory; give the model card's file, "
                          f"e.g. {os.path.join(readme_path, 'README.md')!r}")
    if opts.get("compare"):
        raise ConfigError("--compare works with --format md, json or html; the hf card describes one model")
    card = _card(dirs, compare=None, live=live, metric=opts.get("metric"), baseline=opts.get("baseline"),
                 maximize=opts.get("maximize", True))
    folder = os.path.dirname(os.path.abspath(readme_path))
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write {readme_path}: {folder} does not exist; create the model folder first")
    return update_model_card(readme_path, card, training_type=training_type)


def comparison_markdown(c: dict) -> str:
    head, rows, notes = R.comparison_lines(c)
    out = ["# Comparison with the baseline", ""] + R.md_table(head, rows)
    for n in notes:
        out += ["", n]
    return "\n".join(out) + "\n"


def write_cards(run_dir: str, output_dir: str, *, live: bool = True) -> list[str]:
    """Write ``efficiency_card.md``, ``efficiency_card.json`` and ``climate_card.md`` for the run
    into ``output_dir``. Returns the paths."""
    card = build(run_dir, live=live)
    out = []
    try:
        os.makedirs(output_dir, exist_ok=True)
        for name, text in (("efficiency_card.md", R.markdown(card)), ("efficiency_card.json", R.to_json(card)),
                           ("climate_card.md", R.climate_markdown(card))):
            path = os.path.join(output_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            out.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the cards to {output_dir!r} ({exc.strerror or exc}); "
                          "give a writable directory") from exc
    return out


class Report:
    """The card of one or more runs, for notebooks and scripts: shows itself as a small table
    (``_repr_html_``), renders to Markdown, JSON or HTML. Build it with :func:`report`."""

    def __init__(self, card: dict, paths: Any = None):
        self.card = card
        self._paths = paths

    @property
    def runs(self) -> list[dict]:
        return self.card["runs"]

    def markdown(self) -> str:
        return R.markdown(self.card)

    def to_json(self) -> str:
        return R.to_json(self.card)

    def html(self) -> str:
        """The full self-contained page (``meter report --format html``); needs the plot extra."""
        from ..runread import read_runs
        from .html import render

        runs = read_runs(self._paths) if self._paths is not None else ()
        return render(self.card, runs)

    def __repr__(self) -> str:
        a = self.card["all_experiments"]
        return f"<Report {a['runs']} run(s) {R.fmt(a['energy_kwh'])} kWh {R.fmt(a['emissions_g'])} gCO2eq>"

    def _repr_html_(self) -> str:
        esc = html_text
        if "sweep" in self.card:
            head, rows, _ = R.overview_table(self.card)
            caption = f"{len(self.runs)} runs; " + " ".join(R.overview_notes(self.card)[:2])
        else:
            run = self.runs[0]
            unit = R.run_unit(run)
            head = ["stage", "time (s)", f"energy ({unit[0]})", "gCO2eq", "provenance"]
            rows = [["\u00a0\u00a0" * s["depth"] + s["name"], R.fmt(s["duration_s"]), R.in_unit(s["energy_j"], unit),
                     R.fmt(s["emissions_g"]),
                     "/".join(sorted({R.PROV.get(c["provenance"], "?") for c in s["components"].values()})) or "-"]
                    for s in run["stages"]]
            caption = f"{run['title']}: {R.location_text(run)}, PUE {R.fmt(run['pue'])}"
        th = "".join(f"<th>{esc(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td style=\"text-align:{'left' if i == 0 else 'right'}\">{esc(c)}</td>"
                                        for i, c in enumerate(r)) + "</tr>" for r in rows)
        return f"<table><caption>{esc(caption)}</caption><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def report(paths, *, live: bool = True, metric: str | None = None, baseline: str | None = None,
           maximize: bool = True) -> Report:
    """A :class:`Report` of the runs under ``paths`` (run directories or output directories)."""
    card = _card(paths, compare=None, live=live, metric=metric, baseline=baseline, maximize=maximize)
    return Report(card, paths)
