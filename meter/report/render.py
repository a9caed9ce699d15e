"""Renderers: Markdown, JSON, LaTeX and the climate performance card, from the card model.
They format; every figure was computed in :mod:`meter.report.model`."""

from __future__ import annotations

import json
from typing import Any

from ..recordcheck import is_num
from .escape import clean, md, md_code, tex

PROV = {"counter": "ctr", "power-integrated": "pwr", "estimated": "est", "mixed": "mix", None: "?"}
SENSORS_TITLE = "Sensors and assumptions"
LEGEND = ("Provenance: **ctr** hardware energy counter (NVML, RAPL), **pwr** integrated power samples, "
          f"**est** estimated by a model (assumptions under {SENSORS_TITLE}), **mix** several of these.")


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


def energy_unit(values_j) -> tuple[str, float]:
    """One energy unit for a whole table (J, or kWh from 0.1 kWh up) and its size in joules."""
    top = max((abs(v) for v in values_j if v is not None), default=0.0)
    return ("kWh", 3.6e6) if top >= 3.6e5 else ("J", 1.0)


def in_unit(j: float | None, unit: tuple[str, float]) -> str:
    return "-" if j is None else fmt(j / unit[1])


def run_unit(run: dict) -> tuple[str, float]:
    """The energy unit of a run's stage table, chosen from its largest figure."""
    return energy_unit(s["energy_j"] for s in run["stages"])


def _comp(stage: dict, comp: str, unit: tuple[str, float]) -> str:
    c = stage["components"].get(comp)
    if c is None:
        return "-"
    return f"{in_unit(c['energy_j'], unit)} {PROV.get(c['provenance'], '?')}"


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
    """One row per stage under :func:`stage_head`; every energy in the run's one unit."""
    unit = run_unit(run)
    rows = []
    for s in run["stages"]:
        # Indentation as no-break spaces (characters, not markup): the same text in every format.
        name = INDENT * min(s["depth"], 20) + s["name"] + ("" if s["status"] == "complete" else f" ({s['status']})")
        if s.get("counts_from_children"):
            name += " †"
        rows.append([
            name, s["kind"], fmt(s["duration_s"]), in_unit(s["energy_j"], unit),
            _comp(s, "gpu", unit), _comp(s, "cpu", unit), _comp(s, "dram", unit),
            fmt(s["avg_power_w"]), fmt(s["peak_power_w"]), fmt(s["emissions_g"]), fmt(s["samples_per_s"]),
            fmt(s["tokens_per_s"]), fmt(s["energy_per_sample_j"]), fmt(s["energy_per_1k_tokens_j"]), fmt(s["flops_per_j"]),
        ])
    return rows


INDENT = "\u00a0\u00a0"

STAGE_HEAD = ["stage", "kind", "time (s)", "energy ({unit})", "GPU ({unit})", "CPU ({unit})", "DRAM ({unit})", "avg W",
              "peak W", "gCO2eq", "samples/s", "tokens/s", "J/sample", "J/1k tokens", "FLOP/J"]


def stage_head(run: dict) -> list[str]:
    unit = run_unit(run)[0]
    return [h.format(unit=unit) for h in STAGE_HEAD]


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A GFM table; every cell is text (escaped here), never markup."""
    out = ["| " + " | ".join(md(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(md(c) for c in r) + " |" for r in rows]
    return out


def md_line(text: Any) -> str:
    """A paragraph or list item's text: escaped, and unable to start a block of its own."""
    return md(text, block=True)


def problems_markdown(card: dict, level: int = 1) -> list[str]:
    """The problems section: records skipped and runs not fully read (empty when none)."""
    probs = card.get("problems") or []
    if not probs:
        return []
    return [f"{'#' * level} Problems reading the run logs", "",
            f"{len(probs)} problem(s); the records named were skipped and the figures above exclude them.", ""] + [
        f"- {md_line(p)}" for p in probs] + [""]


def sensor_lines(run: dict) -> list[str]:
    """The run's sensors and every assumption behind its figures, as plain sentences."""
    out = []
    for c in run["sensors"]:
        d = c.get("details") or {}
        bits = []
        if d.get("w_per_thread") is not None:
            vis = f", {d['visible_threads']} hardware threads visible" if d.get("visible_threads") else ""
            bits.append(f"{fmt(d['w_per_thread'])} W per busy hardware thread{vis}")
        elif d.get("tdp_w") is not None:  # run logs of earlier versions: TDP shared over logical CPUs
            per = f", {fmt(d['tdp_w'] / d['logical_cpus'])} W per busy logical CPU ({d['logical_cpus']} logical CPUs)" if d.get("logical_cpus") else ""
            bits.append(f"TDP {fmt(d['tdp_w'])} W{per}" + (f", {d['tdp_source']}" if d.get("tdp_source") else ""))
        if d.get("w_per_gb") is not None:
            bits.append(f"{fmt(d['w_per_gb'])} W per GB of resident memory")
        for k in ("model", "source", "power_source", "mig"):
            if d.get(k):
                bits.append(f"{k.replace('_', ' ')}: {d[k]}")
        out.append(f"{c['key']} {c['label']}: {c['provenance']}, {c['scope']}" + (f" ({'; '.join(bits)})" if bits else ""))
    for u in run["unavailable"]:
        out.append(f"unavailable: {u['sensor']}: {u['reason']}" + (f". Fix: {u['hint']}" if u.get("hint") else ""))
    src = (run.get("config_sources") or {})
    out.append(f"grid intensity: {intensity_text(run)}" + (f"; region from {src['region']}" if src.get("region") else ""))
    out.append(f"PUE {fmt(run['pue'])}" + (f" (from {src['pue']})" if src.get("pue") else "")
               + ": facility energy = IT energy x PUE; emissions include it")
    out.append(sampling_text(run))
    return out


def sampling_text(run: dict) -> str:
    """How often the run was sampled: the fixed cadence, or the quiet cadence it spreads to."""
    every, quiet = run.get("interval_s"), run.get("quiet_interval_s")
    text = f"sampling every {fmt(every)} s"
    if is_num(quiet) and is_num(every) and quiet > every:
        text += f" while stages start and end, up to every {fmt(quiet)} s while none does"
    return text + ", plus synchronous reads at every stage's edges"


def run_markdown(card: dict, run: dict, *, level: int = 1) -> list[str]:
    """One run's efficiency card: summary, stages, sensors and assumptions, notes."""
    h = "#" * level
    t = run["totals"]
    out = [f"{h} Efficiency card: {md(run.get('title') or run['run_name'] or run['run_id'])}", "",
           f"Measured by {md(card['generated_by'])}, run {md_code(run['run_id'])}, {md(run['started_utc'])} to "
           f"{md(run['ended_utc'])}.", ""]
    out += md_table(["", ""], [
        ["Hardware", run["hardware"]["summary"]],
        ["Software", ", ".join(f"{k.replace('_version', '')} {v}" for k, v in run["software"].items())],
        ["Location and grid", f"{location_text(run)}: {intensity_text(run)}"],
        ["PUE", fmt(run["pue"])],
        ["Energy", f"{fmt(t['energy_kwh'])} kWh IT, {fmt(t['facility_energy_kwh'])} kWh facility (IT x PUE)"],
        ["Emissions", f"{fmt(t['emissions_g'])} gCO2eq"],
        ["Time", f"{fmt(t['stage_time_s'])} s in top-level stages; {fmt(t['wall_time_s'])} s wall"],
    ])
    if run.get("world_size"):
        out += job_markdown(run, h)
    out += ["", f"{h}# Stages" + (" (all ranks)" if run.get("world_size") else ""), ""]
    out += md_table(stage_head(run), stage_rows(run))
    out += ["", LEGEND, "Energy is inclusive of nested stages; J/sample, J/1k tokens and FLOP/J use the stage's own "
            "energy (nested stages of another kind, such as evaluation inside an epoch, excluded).", ""]
    out += extra_sections(run)
    out += [f"{h}# {SENSORS_TITLE}", ""]
    out += [f"- {md_line(line)}" for line in sensor_lines(run)]
    warnings = sorted({w for s in run["stages"] for w in s["warnings"]})
    if warnings or run["faults"] or run["notes"]:
        out += ["", f"{h}# Notes", ""]
        out += [f"- {md_line(n)}" for n in run["notes"]]
        out += [f"- sensor fault: {md(f.get('key'))}: {md(f.get('reason'))}" for f in run["faults"]]
        out += [f"- {md_line(w)}" for w in warnings]
    out.append("")
    return out


def job_markdown(run: dict, h: str) -> list[str]:
    """A job's sections: ranks, energy per node and per device, stage mismatch, then per rank."""
    job = run.get("job") or {}
    unit = run_unit(run)
    missing = job.get("missing_ranks") or []
    out = ["", f"{h}# Job {md_code(run.get('job_id'))}: {run['world_size']} ranks", "",
           f"Ranks with a run log: {', '.join(str(r['rank']) for r in run['ranks'])}"
           + (f"; missing: {', '.join(map(str, missing))} (their energy is not in the totals)" if missing else "") + ".", ""]
    if job.get("nodes"):
        out += [f"{h}## Per node", ""]
        out += md_table(["node", "hosts", "ranks", f"energy ({unit[0]})", "host sensors read by"],
                        [[md(n), md(", ".join(v["hosts"])), ", ".join(map(str, v["ranks"])), in_unit(v["energy_j"], unit),
                          "-" if v["host_sensors_rank"] is None else f"rank {v['host_sensors_rank']}"]
                         for n, v in job["nodes"].items()])
        out.append("")
    if job.get("devices"):
        out += [f"{h}## Per device", ""]
        out += md_table(["device", "node", "measured by", f"energy ({unit[0]})", "provenance"],
                        [[md(d.get("uuid") or d.get("label") or k), md(d.get("node")), ", ".join(f"rank {r}" for r in d["ranks"]),
                          in_unit(d["energy_j"], unit), md(d.get("provenance"))] for k, d in job["devices"].items()])
        out.append("")
    mm = job.get("stage_mismatch") or {}
    for path, rs in (mm.get("stages_not_on_every_rank") or {}).items():
        out.append(f"- stage {md_code(path)} ran on rank(s) {', '.join(map(str, rs))} only")
    for name, where in (mm.get("names_nested_differently") or {}).items():
        out.append(f"- stage {md_code(name)} is nested differently: "
                   + "; ".join(f"{md_code(p)} on rank(s) {', '.join(map(str, rs))}" for p, rs in where.items()))
    for u, rs in (job.get("devices_measured_twice") or {}).items():
        out.append(f"- {md(u)} was measured by ranks {', '.join(map(str, rs))} (an ownership fallback): counted more than once")
    out += ["", f"{h}## Per rank", ""] if out[-1] != "" else [f"{h}## Per rank", ""]
    out += md_table(["rank", "node", "run", f"energy ({unit[0]})", "GPUs measured", "host sensors"],
                    [[str(r["rank"]), md(r.get("node")), md(r["run_id"]), in_unit(r["totals"]["energy_j"], unit),
                      md(", ".join(r.get("owned_gpus") or []) or "-"), "yes" if r.get("owns_host_sensors") else "no"]
                     for r in run["ranks"]])
    return out


def _param(v: Any) -> str:
    return fmt(v) if isinstance(v, float) else str(v)


def overview_table(card: dict) -> tuple[list[str], list[list[str]], tuple[str, float]]:
    """Head, rows and energy unit of the sweep overview (one row per run)."""
    sw = card["sweep"]
    unit = energy_unit(r["energy_j"] for r in sw["rows"])
    head = ["run", *sw["param_keys"], f"energy ({unit[0]})", "x baseline", "gCO2eq", "time (s)"]
    if sw["metric"]:
        head += [sw["metric"], f"{sw['metric']} vs baseline", "Pareto"]
    rows = []
    for r in sw["rows"]:
        row = [r["title"] + (" (baseline)" if r["is_baseline"] else ""), *(_param(r["params"].get(k, "-")) for k in sw["param_keys"]),
               in_unit(r["energy_j"], unit), fmt(r["energy_ratio"]), fmt(r["emissions_g"]), fmt(r["time_s"])]
        if sw["metric"]:
            d = r["metric_delta"]
            row += [fmt(r["metric"]), "-" if d is None else ("+" if d > 0 else "") + fmt(d), "yes" if r["pareto"] else ""]
        rows.append(row)
    return head, rows, unit


def overview_notes(card: dict) -> list[str]:
    """The sentences under the overview table: metric, frontier, baseline, constants, totals."""
    sw, a = card["sweep"], card["all_experiments"]
    out = []
    if sw["metric"]:
        better = "higher" if sw["maximize"] else "lower"
        out.append(f"Quality metric: {sw['metric']} ({better} is better), from the span tag metric.{sw['metric']}. "
                   f"Pareto: no other run reaches a metric as good for less energy.")
    else:
        out.append("No quality metric is logged: tag a stage with metric.NAME (e.g. "
                   "span.tags[\"metric.accuracy\"] = 0.91) to get the metric column and the Pareto frontier.")
    how = "chosen" if sw["baseline_chosen"] else "the first run; choose another with --baseline or baseline="
    out.append(f"Baseline: {sw['baseline_title']} ({how}); x baseline is energy / the baseline's energy.")
    if sw["constant_params"]:
        out.append("Same in every run: " + ", ".join(f"{k} {_param(v)}" for k, v in sw["constant_params"].items()) + ".")
    out.append(f"All experiments: {a['runs']} runs, {fmt(a['wall_time_s'])} s, {fmt(a['energy_kwh'])} kWh IT, "
               f"{fmt(a['facility_energy_kwh'])} kWh facility, {fmt(a['emissions_g'])} gCO2eq.")
    return out


def markdown(card: dict) -> str:
    """The Markdown report: for several runs an overview first, then each run's card."""
    out: list[str] = []
    sweep = len(card["runs"]) > 1 and "sweep" in card
    if sweep:
        head, rows, _ = overview_table(card)
        out += [f"# Sweep overview: {len(card['runs'])} runs", ""]
        out += md_table(head, rows)
        out += [""] + [md_line(n) for n in overview_notes(card)] + [""]
    for run in card["runs"]:
        out += run_markdown(card, run, level=2 if sweep else 1)
    out += problems_markdown(card, level=2 if sweep else 1)
    return "\n".join(out)


def extra_sections(run: dict) -> list[str]:
    """Derived counts, generation, budget and forecast: present only for runs that have them."""
    out: list[str] = []
    derived = [s for s in run["stages"] if s.get("counts_from_children")]
    if derived:
        out += ["† " + md("; ".join(f"{s['path']}: {', '.join(s['counts_from_children'])}" for s in derived))
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
            out.append(f"- Budget of {md_code(b['path'])}: {limit} (on_budget={md(b['action'])}): {md(b['outcome'])}; used "
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


def _tex(s: Any) -> str:
    return tex(s)


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
                f"\\caption{{Energy and emissions per stage of {_tex(run.get('title') or run['run_name'] or run['run_id'])} on "
                f"{_tex(run['hardware']['summary'])}. Grid intensity {fmt(i.get('g_per_kwh'))} gCO$_2$eq/kWh "
                f"({_tex(i.get('zone'))}, {_tex(i.get('source'))}, {i.get('year') or 'n/a'}), PUE {fmt(run['pue'])}. "
                f"Provenance: ctr hardware counter, pwr integrated power, est estimated. Measured with {_tex(card['generated_by'])}.}}",
                r"\end{table}", ""]
    out += [f"% problem reading the run logs: {clean(p)}" for p in card.get("problems") or []]
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
    out = [f"# Climate performance model card: {md(title)}", "",
           "Following the guidelines of Hershcovich et al. (2022), \"Towards Climate Awareness in NLP Research\".", ""]
    out += md_table(["Minimum card", ""], [list(r) for r in rows[:5]])
    out += [""] + md_table(["Extended card", ""], [list(r) for r in rows[5:]])
    probs = problems_markdown(card, level=2)
    return "\n".join(out + ([""] + probs if probs else [])).rstrip("\n") + "\n"


def comparison_lines(c: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Head, rows and concluding sentences of a comparison (:func:`meter.report.analysis.compare`)."""
    f = fmt
    head = ["stage", "baseline s", "candidate s", "speedup", "baseline J", "candidate J", "energy saved J", "gCO2eq saved"]
    rows = [[r["path"], f(r["baseline_duration_s"]), f(r["candidate_duration_s"]), f(r["speedup"]), f(r["baseline_energy_j"]),
             f(r["candidate_energy_j"]), f(r["saved_energy_j"]), f(r["saved_emissions_g"])] for r in c["stages"]]
    prep = c["preparation"]
    labels = {"without_preparation": "without preparation", "with_preparation": "with preparation"}
    totals = c["totals"].items() if prep != "none" else [("total", c["totals"]["with_preparation"])]
    notes = [f"{labels.get(k, k).capitalize()}: speedup {f(t['speedup'])}, energy saved {f(t['energy_saved_j'])} J, "
             f"{f(t['emissions_saved_g'])} gCO2eq." for k, t in totals]
    p = c["preparation_energy_j"]
    if prep == "none":
        notes.append("Neither run has a preparation stage (kind prepare), so there is no one-time overhead to pay back.")
    elif prep == "no-extra":
        notes.append(f"Preparation energy (one-time overhead): baseline {f(p['baseline'])} J, candidate {f(p['candidate'])} J; "
                     "the candidate needs no more preparation than the baseline.")
    elif prep == "pays-back":
        notes.append(f"Preparation energy (one-time overhead): baseline {f(p['baseline'])} J, candidate {f(p['candidate'])} J; "
                     f"break-even after {f(c['break_even_runs'])} run(s).")
    else:
        notes.append(f"Preparation energy (one-time overhead): baseline {f(p['baseline'])} J, candidate {f(p['candidate'])} J; "
                     "the candidate saves no energy per run, so its extra preparation is never paid back.")
    return head, rows, notes
