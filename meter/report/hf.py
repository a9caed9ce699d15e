"""The Hugging Face model card: ``co2_eq_emissions`` merged into README.md's YAML front matter
through huggingface_hub's ``ModelCard``, and an efficiency section in its body.

``emissions`` is in grams and written as a plain decimal (PyYAML would write 1.5e-05, which the
Hub's own ``emissions_thresholds`` filter reads as 1.5).
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from typing import Any

from .escape import clean, md
from .render import PROV, fmt, kwh, location_text

BEGIN = "<!-- meter:efficiency:start -->"
END = "<!-- meter:efficiency:end -->"
# The section: from a line that is exactly BEGIN to the next line that is exactly END. Names are
# escaped (``<`` becomes ``\\<``) and kept on one line, so no stage name can forge either marker.
_SECTION = re.compile(rf"^{re.escape(BEGIN)}[ \t]*$.*?^{re.escape(END)}[ \t]*$", re.M | re.S)


class PlainDecimal(float):
    """A float that YAML writes without an exponent."""


def _represent(dumper, value):
    text = format(Decimal(f"{float(value):.6g}"), "f")
    if "." not in text:
        text += ".0"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


def _register_yaml() -> None:
    import yaml

    # Only instances of PlainDecimal are affected, in whichever dumper huggingface_hub uses.
    for dumper in (yaml.Dumper, yaml.SafeDumper):
        dumper.add_representer(PlainDecimal, _represent)


def co2_metadata(card: dict, *, training_type: str = "fine-tuning") -> dict[str, Any]:
    """The five ``co2_eq_emissions`` keys for the final run (the card's first run)."""
    if training_type not in ("fine-tuning", "pre-training"):
        from ..errors import ConfigError

        raise ConfigError(f"training_type={training_type!r}: the Hub expects 'fine-tuning' or 'pre-training'")
    run = card["runs"][0]
    t = run["totals"]
    grams = t["train_emissions_g"] if t["train_time_s"] else t["emissions_g"]
    provs = sorted({f"{comp.upper()} {c['provenance']}" for s in run["stages"] for comp, c in s["components"].items()})
    return {
        "emissions": PlainDecimal(grams),
        "source": clean(f"{card['generated_by']} ({'; '.join(provs)}; intensity {fmt((run['intensity'] or {}).get('g_per_kwh'))} gCO2eq/kWh, PUE {fmt(run['pue'])})"),
        "training_type": training_type,
        "geographical_location": clean(location_text(run)),
        "hardware_used": clean(run["hardware"]["summary"]),
    }


def body_section(card: dict) -> str:
    run = card["runs"][0]
    lines = [BEGIN, "## Efficiency", "",
             f"Measured with {md(card['generated_by'])}. Energy by stage (provenance: ctr hardware counter, "
             "pwr integrated power, est estimated):", "",
             "| stage | time (s) | energy (kWh) | gCO2eq | J/sample | provenance |", "|---|---|---|---|---|---|"]
    for s in run["stages"]:
        prov = "/".join(sorted({PROV.get(c["provenance"], "?") for c in s["components"].values()})) or "-"
        lines.append(f"| {md(s['path'])} | {fmt(s['duration_s'])} | {kwh(s['energy_j'])} | {fmt(s['emissions_g'])} | "
                     f"{fmt(s['energy_per_sample_j'])} | {prov} |")
    t = run["totals"]
    lines += ["", f"Total: {fmt(t['energy_kwh'])} kWh IT energy, {fmt(t['facility_energy_kwh'])} kWh with PUE "
              f"{fmt(run['pue'])}, {fmt(t['emissions_g'])} gCO2eq; hardware: {md(run['hardware']['summary'])}."]
    probs = card.get("problems") or []
    if probs:
        lines += ["", f"Problems reading the run logs ({len(probs)}; the records named were skipped):", ""]
        lines += [f"- {md(p, block=True)}" for p in probs]
    lines.append(END)
    return "\n".join(lines)


def update_model_card(readme_path: str, card: dict, *, training_type: str = "fine-tuning") -> str:
    """Merge the emissions metadata and the efficiency section into ``readme_path`` (created if
    missing), keeping every other key and the rest of the body. Returns the path written."""
    from huggingface_hub import ModelCard

    _register_yaml()
    if os.path.exists(readme_path):
        mc = ModelCard.load(readme_path)
    else:
        mc = ModelCard("---\n{}\n---\n")
    mc.data["co2_eq_emissions"] = co2_metadata(card, training_type=training_type)
    text = mc.text or ""
    section = body_section(card)
    if _SECTION.search(text):
        # Every earlier section is replaced (a copied card may hold two): one, with fresh rows.
        m = _SECTION.search(text)
        text = text[: m.start()] + section + _SECTION.sub("", text[m.end():])
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "\n") + section + "\n"
    mc.text = text
    mc.save(readme_path)
    return readme_path


def render(card: dict, *, training_type: str = "fine-tuning") -> str:
    """The README.md text a fresh model card would have (for ``meter report --format hf``)."""
    from huggingface_hub import ModelCard

    _register_yaml()
    mc = ModelCard("---\n{}\n---\n")
    mc.data["co2_eq_emissions"] = co2_metadata(card, training_type=training_type)
    mc.text = "\n" + body_section(card) + "\n"
    return str(mc)
