"""Offline grid intensity: codecarbon's packaged data files, read as data, plus meter's own map
from cloud regions to grid zones (``cloud_regions.csv``) and ISO country codes (``countries.csv``).

Zone keys: ISO 3166 alpha-2 countries (``FR``; alpha-3 and English names are aliases), US states
(``US-CA``), Canadian provinces (``CA-QC``), Chinese provinces (``CN-BJ``), Nordic bidding zones
(``SE3``, ``NO1``), cloud regions (``aws:eu-west-3``, ``gcp:europe-west1``, ``azure:francecentral``)
and ``WORLD``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import CarbonError
from ..sensors.estimate import codecarbon_data_dir
from ..units import lb_per_mwh_to_g_per_kwh

WORLD_AVERAGE_G_PER_KWH = 475.0
_HERE = os.path.dirname(__file__)

CANADA = {
    "alberta": "CA-AB", "british columbia": "CA-BC", "manitoba": "CA-MB", "new brunswick": "CA-NB",
    "newfoundland and labrador": "CA-NL", "nova scotia": "CA-NS", "northwest territories": "CA-NT",
    "nunavut": "CA-NU", "ontario": "CA-ON", "prince edward island": "CA-PE", "quebec": "CA-QC",
    "saskatchewan": "CA-SK", "yukon": "CA-YT",
}
# Canada's file gives generation shares; its keys differ from carbon_intensity_per_source.json's.
_CANADA_SOURCES = {"naturalGas": "natural_gas", "hydro": "hydroelectricity", "coal": "coal", "petroleum": "petroleum",
                   "nuclear": "nuclear", "wind": "wind", "solar": "solar", "biomass": "biomass"}


@dataclass(frozen=True)
class Zone:
    key: str
    name: str
    g_per_kwh: float
    source: str
    year: int | None
    factor: str  # lifecycle | direct | unspecified
    kind: str = "average"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    note: str = ""


def _data_dir() -> str:
    d = codecarbon_data_dir()
    if d is None:
        raise CarbonError(
            "codecarbon's data files were not found: meter reads its carbon-intensity tables. "
            "Install it with `pip install codecarbon` (a core dependency of meter-ml)"
        )
    return d


def _load_json(*parts: str) -> dict:
    path = os.path.join(_data_dir(), *parts)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CarbonError(f"cannot read {path} ({exc}); reinstall codecarbon") from None


def _countries() -> list[tuple[str, str, str]]:
    with open(os.path.join(_HERE, "countries.csv"), encoding="utf-8") as f:
        rows = [r for r in csv.reader(line for line in f if not line.startswith("#"))]
    return [tuple(r) for r in rows[1:]]


def cloud_regions() -> list[dict]:
    with open(os.path.join(_HERE, "cloud_regions.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


@lru_cache(maxsize=1)
def zones() -> dict[str, Zone]:
    """Every offline zone, by key. Cached: the files are read once per process."""
    out: dict[str, Zone] = {}
    out["WORLD"] = Zone("WORLD", "World average", WORLD_AVERAGE_G_PER_KWH,
                        "IEA Global Energy & CO2 Status Report 2019, via codecarbon carbon_intensity_per_source.json",
                        2019, "unspecified", aliases=("world", "global"))
    per_source = _load_json("private_infra", "carbon_intensity_per_source.json")
    mix = _load_json("private_infra", "global_energy_mix.json")
    a3_to_a2 = {a3: (a2, name) for a2, a3, name in _countries()}
    for a3, row in mix.items():
        if a3 not in a3_to_a2 or row.get("carbon_intensity") is None:
            continue
        a2, name = a3_to_a2[a3]
        out[a2] = Zone(a2, row.get("country_name") or name, float(row["carbon_intensity"]),
                       "Our World in Data (Ember, Energy Institute) carbon_intensity_elec, via codecarbon global_energy_mix.json",
                       row.get("year"), "lifecycle", aliases=tuple(dict.fromkeys((a3.lower(), name.lower(), str(row.get("country_name", "")).lower()))))

    usa = _load_json("private_infra", "2023", "usa_emissions.json")
    src = usa.get("_source", {})
    for state, row in usa.items():
        if state.startswith("_") or not isinstance(row, dict) or "regionCode" not in row:
            continue
        key = f"US-{row['regionCode']}"
        out[key] = Zone(key, f"{state.title()}, USA", lb_per_mwh_to_g_per_kwh(float(row["emissions"])),
                        f"{src.get('name', 'EPA eGRID')} (field {src.get('field', '?')}), via codecarbon usa_emissions.json",
                        src.get("year", 2023), "direct", aliases=(state, f"us-{state}"))

    canada = _load_json("private_infra", "2023", "canada_energy_mix.json")
    for prov, shares in canada.items():
        key = CANADA.get(prov)
        if key is None:
            continue
        total = float(shares.get("total") or 100.0)
        g = sum(float(shares.get(k, 0.0)) / total * float(per_source[v]) for k, v in _CANADA_SOURCES.items())
        covered = sum(float(shares.get(k, 0.0)) for k in _CANADA_SOURCES) / total
        out[key] = Zone(key, f"{prov.title()}, Canada", g,
                        "codecarbon canada_energy_mix.json (2023 generation shares) x carbon_intensity_per_source.json lifecycle factors",
                        2023, "lifecycle", aliases=(prov, f"ca-{prov}"),
                        note=f"{covered:.0%} of generation has a factor; the rest counts as zero" if covered < 0.995 else "")

    nordic = _load_json("private_infra", "nordic_emissions.json")
    for key, row in nordic.get("data", {}).items():
        if key == "FI":  # Finland is a country; the country table covers it
            continue
        out[key] = Zone(key, row.get("description", key), float(row["emission_factor"]),
                        "ENTSO-E generation per bidding zone x lifecycle factors, via codecarbon nordic_emissions.json",
                        row.get("year"), "lifecycle", aliases=(key.lower(),), note=row.get("coverage", ""))

    china = _load_json("private_infra", "2023", "china_provincial_emissions.json")
    year = china.get("metadata", {}).get("year", 2023)
    for key, row in china.get("data", {}).items():
        out[key] = Zone(key, f"{row.get('description', key)}, China", float(row["emission_factor"]),
                        "China MEE/NBS 2023 provincial electricity CO2 factors, via codecarbon china_provincial_emissions.json",
                        year, "direct", aliases=tuple(row.get("names", [])), note="CO2 only, not CO2eq")

    gcp_published = {}
    with open(os.path.join(_data_dir(), "cloud", "impact.csv"), encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            region = row["region"].replace("me-cenrtal1", "me-central1")  # typo in the data file
            if row["provider"] == "gcp":
                gcp_published[region] = row
    for row in cloud_regions():
        key = f"{row['provider']}:{row['region']}"
        pub = gcp_published.get(row["region"]) if row["provider"] == "gcp" else None
        if pub is not None:
            out[key] = Zone(key, f"GCP {row['region']} ({pub.get('city') or row['location']})", float(pub["impact"]),
                            f"Google Cloud region carbon data ({pub.get('source')}), via codecarbon cloud/impact.csv",
                            None, "unspecified", aliases=(row["region"],))
            continue
        grid = out.get(row["zone"])
        if grid is None:
            continue
        out[key] = Zone(key, f"{row['provider'].upper() if row['provider'] == 'aws' else row['provider'].title()} {row['region']} ({row['location']}, grid {row['zone']})",
                        grid.g_per_kwh, f"{grid.source}; region-to-zone map: meter cloud_regions.csv",
                        grid.year, grid.factor, aliases=(row["region"],), note=f"grid zone {row['zone']}")
    return out


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").split())


@lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for key, z in zones().items():
        for a in (key.lower(),) + z.aliases:
            a = _norm(a)
            if a and a not in idx:
                idx[a] = key
    for key in zones():  # a country's alpha-2 beats any alias that happens to equal it
        idx[key.lower()] = key
    return idx


def lookup(region: str) -> Zone | None:
    return zones().get(_alias_index().get(_norm(region), ""))


def close_matches(region: str, n: int = 5) -> list[str]:
    import difflib

    idx = _alias_index()
    hits = difflib.get_close_matches(_norm(region), list(idx), n=n * 3, cutoff=0.6)
    out = []
    for h in hits:
        z = zones()[idx[h]]
        label = f"{z.key} ({z.name})"
        if label not in out:
            out.append(label)
    return out[:n]


def search(query: str | None = None) -> list[Zone]:
    """Zones whose key, name or alias contains ``query`` (all zones if None), ranked for a person
    typing a code: the exact zone (code, name or alias) first, then zones whose code or name
    starts with the query, then the rest; by key within each group."""
    zs = sorted(zones().values(), key=lambda z: z.key)
    if not query:
        return zs
    q = _norm(query)
    hits = [z for z in zs if q in z.key.lower() or q in z.name.lower() or any(q in a for a in z.aliases)]
    exact = lookup(query)

    def tier(z: Zone) -> int:
        if z.key.lower() == q or z.name.lower() == q or (exact is not None and z.key == exact.key):
            return 0
        return 1 if z.key.lower().startswith(q) or z.name.lower().startswith(q) else 2

    return sorted(hits, key=tier)
