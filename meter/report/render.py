"""Renderers: Markdown, JSON, LaTeX and the climate performance card, from the card model.
They format; every figure was computed in :mod:`meter.report.model`."""

from __future__ import annotations

import json
from typing import Any

PROV = {"counter": "ctr", "power-integrated": "pwr", "estimated": "est", "mixed": "mix", None: "?"}
LEGEND = ("Provenance: **ctr** hardware energy counter (NVML, RAPL), **pwr** integrated power samples, "
          "**est** estimated by a model (assumptions under Sensors), **mix** several of these.")


def fmt(v: Any, digits: int = 3) -> str:
    """Human figure: '-' when absent, significant digits otherwise, no exponent below 1e-4."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-4:
        return f"{v:.{digits}g}"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def kwh(j: float | None) -> str:
    return "-" if j is None else fmt(j / 3.6e6)


def _comp(stage: dict, comp: str) -> str:
    c = stage["components"].get(comp)
    if c is None:
        return "-"
    return f"{fmt(c['energy_j'])} J {PROV.get(c['provenance'], '?')}"


def intensity_text(run: dict) -> str:
    i = run["intensity"] or {}
    if i.get("g_per_kwh") is None:
        return "unknown"
    year = f", {i['year']}" if i.get("year") else ""
    note = f"; {i['note']}" if i.get("note") else ""
    return (f"{fmt(i['g_per_kwh'])} gCO2eq/kWh ({i.get('zone')}, {i.get('kind')}, {i.get('factor')}, "
            f"{i.get('method')}{year}; {i.get('source')}{note})")


def location_text(run: dict) -> str:
    i = run["intensity"] or {}
    if not run["region"]:
        return "region unknown (not given)"
    return f"{i.get('name') or run['region']} ({i.get('zone')})"


def stage_rows(run: dict) -> list[list[str]]:
    rows = []
    for s in run["stages"]:
        name = "&nbsp;&nbsp;" * s["depth"] + s["name"] + ("" if s["status"] == "complete" else f" ({s['status']})")
        if s.get("counts_from_children"):
            name += " †"
        rows.append([
            name, s["kind"], fmt(s["duration_s"]), kwh(s["energy_j"]), _comp(s, "gpu"), _comp(s, "cpu"), _comp(s, "dram"),
            fmt(s["avg_power_w"]), fmt(s["peak_power_w"]), fmt(s["emissions_g"]), fmt(s["samples_per_s"]),
            fmt(s["tokens_per_s"]), fmt(s["energy_per_sample_j"]), fmt(s["energy_per_1k_tokens_j"]), fmt(s["flops_per_j"]),
        ])
    return rows


STAGE_HEAD = ["stage", "kind", "time (s)", "energy (kWh)", "GPU", "CPU", "DRAM", "avg W", "peak W", "gCO2eq",
              "samples/s", "tokens/s", "J/sample", "J/1k tokens", "FLOP/J"]


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(card: dict) -> str:
    out: list[str] = []
    for run in card["runs"]:
        t = run["totals"]
        title = run["run_name"] or run["run_id"]
        out += [f"# Efficiency card: {title}", "",
                f"Measured by {card['generated_by']}, run `{run['run_id']}`, {run['started_utc']} to {run['ended_utc']}.", ""]
        out += md_table(["", ""], [
            ["Hardware", run["hardware"]["summary"]],
            ["Software", ", ".join(f"{k.replace('_version', '')} {v}" for k, v in run["software"].items())],
            ["Location and grid", f"{location_text(run)}: {intensity_text(run)}"],
            ["PUE", fmt(run["pue"])],
            ["Energy", f"{fmt(t['energy_kwh'])} kWh IT, {fmt(t['facility_energy_kwh'])} kWh facility (IT x PUE)"],
            ["Emissions", f"{fmt(t['emissions_g'])} gCO2eq"],
            ["Time", f"{fmt(t['stage_time_s'])} s in top-level stages; {fmt(t['wall_time_s'])} s wall"],
            ["Sampling", f"every {fmt(run['interval_s'])} s, plus synchronous reads at every stage's edges"],
        ])
        out += ["", "## Stages", ""]
        out += md_table(STAGE_HEAD, stage_rows(run))
        out += ["", LEGEND, "Energy is inclusive of nested stages; J/sample, J/1k tokens and FLOP/J use the stage's own "
                "energy (nested stages of another kind, such as evaluation inside an epoch, excluded).", ""]
        out += extra_sections(run)
        out += ["## Sensors", ""]
        for c in run["sensors"]:
            d = c.get("details") or {}
            extra = "; ".join(f"{k}: {d[k]}" for k in ("tdp_source", "source", "power_source", "mig") if d.get(k))
            out.append(f"- **{c['key']}** {c['label']}: {c['provenance']}, {c['scope']}" + (f" ({extra})" if extra else ""))
        for u in run["unavailable"]:
            out.append(f"- unavailable: **{u['sensor']}**: {u['reason']}" + (f". Fix: {u['hint']}" if u.get("hint") else ""))
        warnings = sorted({w for s in run["stages"] for w in s["warnings"]})
        if warnings or run["faults"] or run["notes"]:
            out += ["", "## Notes", ""]
            out += [f"- {n}" for n in run["notes"]]
            out += [f"- sensor fault: {f.get('key')}: {f.get('reason')}" for f in run["faults"]]
            out += [f"- {w}" for w in warnings]
        out.append("")
    if len(card["runs"]) > 1:
        a = card["all_experiments"]
        out += ["# All experiments", "",
                f"{a['runs']} runs: {fmt(a['wall_time_s'])} s, {fmt(a['energy_kwh'])} kWh IT, "
                f"{fmt(a['facility_energy_kwh'])} kWh facility, {fmt(a['emissions_g'])} gCO2eq.", ""]
    return "\n".join(out)


def extra_sections(run: dict) -> list[str]:
    """Derived counts, generation, budget and forecast: present only for runs that have them."""
    out: list[str] = []
    derived = [s for s in run["stages"] if s.get("counts_from_children")]
    if derived:
        out += ["† " + "; ".join(f"{s['path']}: {', '.join(s['counts_from_children'])}" for s in derived)
                + ": the sum of its sub-stages of the same kind (the stage counted none itself).", ""]
    gen = [s for s in run["stages"] if s.get("output_tokens")]
    if gen:
        out += ["## Generation", ""]
        out += md_table(["stage", "samples", "input tokens", "output tokens", "J/sample", "J/output token", "output tokens/s"], [
            [s["path"], fmt(s["samples"]), fmt(s["tokens"]), fmt(s["output_tokens"]), fmt(s["energy_per_sample_j"]),
             fmt(s["energy_per_output_token_j"]), fmt(s["output_tokens"] / s["duration_s"] if s["duration_s"] else None)]
            for s in gen])
        out.append("")
    if run.get("budgets") or run.get("forecasts"):
        out += ["## Budget and forecast", ""]
        for b in run.get("budgets", []):
            limit = " and ".join(x for x in (f"{fmt(b['budget_kwh'])} kWh" if b["budget_kwh"] else "",
                                             f"{fmt(b['budget_g'])} gCO2eq" if b["budget_g"] else "") if x)
            out.append(f"- Budget of `{b['path']}`: {limit} (on_budget={b['action']}): {b['outcome']}; used "
                       f"{fmt(b['energy_kwh'])} kWh, {fmt(b['emissions_g'])} gCO2eq.")
        if run.get("forecasts"):
            if run.get("budgets"):
                out.append("")
            out += md_table(["stage", "forecast at step", "forecast (kWh)", "band (kWh)", "actual (kWh)", "error", "within band"], [
                [f["path"], f"{fmt(f['at_step'])} of {fmt(f['steps'])}", fmt(f["forecast_kwh"]),
                 f"{fmt(f['low_kwh'])} to {fmt(f['high_kwh'])}", fmt(f["actual_kwh"]),
                 f"{f['error'] * 100:+.1f}%" if f["error"] is not None else "-",
                 ("yes" if f["within_band"] else "no") if f["complete_run"] else "run stopped early"]
                for f in run["forecasts"]])
        out.append("")
    return out


def to_json(card: dict) -> str:
    return json.dumps(card, indent=2, default=str) + "\n"


_LATEX_ESC = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def _tex(s: str) -> str:
    return "".join(_LATEX_ESC.get(ch, ch) for ch in str(s))


def latex(card: dict) -> str:
    """A booktabs table per run for a paper's appendix: stages as rows, units in the header."""
    out = ["% requires \\usepackage{booktabs}"]
    for run in card["runs"]:
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lrrrrrr}", r"\toprule",
                r"Stage & Time (s) & Energy (kWh) & Avg.\ power (W) & CO$_2$eq (g) & J/sample & Provenance \\", r"\midrule"]
        for s in run["stages"]:
            provs = "/".join(sorted({PROV.get(c["provenance"], "?") for c in s["components"].values()})) or "-"
            name = r"\quad " * s["depth"] + _tex(s["name"])
            out.append(f"{name} & {fmt(s['duration_s'])} & {kwh(s['energy_j'])} & {fmt(s['avg_power_w'])} & "
                       f"{fmt(s['emissions_g'])} & {fmt(s['energy_per_sample_j'])} & {provs} \\\\")
        i = run["intensity"] or {}
        out += [r"\bottomrule", r"\end{tabular}",
                f"\\caption{{Energy and emissions per stage of {_tex(run['run_name'] or run['run_id'])} on "
                f"{_tex(run['hardware']['summary'])}. Grid intensity {fmt(i.get('g_per_kwh'))} gCO$_2$eq/kWh "
                f"({_tex(i.get('zone'))}, {_tex(i.get('source'))}, {i.get('year') or 'n/a'}), PUE {fmt(run['pue'])}. "
                f"Provenance: ctr hardware counter, pwr integrated power, est estimated. Measured with {_tex(card['generated_by'])}.}}",
                r"\end{table}", ""]
    return "\n".join(out)


def climate_rows(card: dict, *, model_public: str | None = None, positive_impact: str | None = None) -> list[tuple[str, str]]:
    """The climate performance model card (Hershcovich et al. 2022): minimum rows 1-5 and
    extended rows 6-11, filled from measurements of the final run (the first) and all runs."""
    run = card["runs"][0]
    t = run["totals"]
    a = card["all_experiments"]
    train = [s for s in run["stages"] if s["depth"] == 0 and s["kind"] == "train"]
    train_time = sum(s["duration_s"] for s in train)
    train_e = sum(s["energy_j"] or 0.0 for s in train)
    power_kw = train_e / train_time / 1000 if train_time else None
    by_comp: dict[str, float] = {}
    for s in train:
        for comp, c in s["components"].items():
            by_comp[comp] = by_comp.get(comp, 0.0) + c["energy_j"]
    provs = {c["provenance"] for s in train for c in s["components"].values()}
    how = "measured" if provs <= {"counter", "power-integrated"} else ("estimated" if provs == {"estimated"} else "partly estimated")
    split = ", ".join(f"{c.upper()} {kwh(e)} kWh ({PROV.get(train[0]['components'][c]['provenance'])})" for c, e in by_comp.items()) if train else ""
    infer = [s for s in run["stages"] if s["kind"] == "predict" and s["samples"]] or [s for s in run["stages"] if s["kind"] == "evaluate" and s["samples"]]
    per_sample = None
    if infer:
        g = sum(s["emissions_g"] or 0.0 for s in infer)
        n = sum(s["samples"] for s in infer)
        per_sample = f"{fmt(g / n * 1000)} mg CO2eq per sample ({infer[0]['kind']} stage, {fmt(n)} samples)"
    i = run["intensity"] or {}
    return [
        ("1. Is the resulting model publicly available?", model_public or "not stated"),
        ("2. How much time does the training of the final model take?", f"{fmt(train_time / 3600)} h ({fmt(train_time)} s)" if train else "no training stage measured"),
        ("3. How much time did all experiments take (incl. hyperparameter search)?", f"{fmt(a['wall_time_s'] / 3600)} h over {a['runs']} run(s)"),
        ("4. What was the energy consumption (GPU/CPU)?",
         f"{kwh(train_e)} kWh for training ({split}); average power {fmt(power_kw)} kW ({how})" if train else f"{fmt(t['energy_kwh'])} kWh"),
        ("5. At which geo location were the computations performed?", location_text(run)),
        ("6. What was the energy mix at the geo location?", f"{fmt(i.get('g_per_kwh'))} gCO2eq/kWh ({i.get('source')}, {i.get('year') or 'n/a'}, {i.get('method')})"),
        ("7. How much CO2eq was emitted to train the final model?", f"{fmt(t['train_emissions_g'] / 1000)} kg" if train else "no training stage measured"),
        ("8. How much CO2eq was emitted for all experiments?", f"{fmt(a['emissions_g'] / 1000)} kg"),
        ("9. What is the average CO2eq emission for the inference of one sample?", per_sample or "no predict or evaluation stage with samples"),
        ("10. Which positive environmental impact can be expected from this work?", positive_impact or "not stated"),
        ("11. Comments", f"Measured with {card['generated_by']}; PUE {fmt(run['pue'])}; energy provenance per component in the efficiency card."),
    ]


def climate_markdown(card: dict, **kw: Any) -> str:
    rows = climate_rows(card, **kw)
    title = card["runs"][0]["run_name"] or card["runs"][0]["run_id"]
    out = [f"# Climate performance model card: {title}", "",
           "Following the guidelines of Hershcovich et al. (2022), \"Towards Climate Awareness in NLP Research\".", "",
           "| Minimum card | |", "|---|---|"]
    out += [f"| {q} | {a} |" for q, a in rows[:5]]
    out += ["", "| Extended card | |", "|---|---|"]
    out += [f"| {q} | {a} |" for q, a in rows[5:]]
    return "\n".join(out) + "\n"
