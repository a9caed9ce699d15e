"""Configuration: arguments > environment (``METER_*``) > ``[tool.meter]`` in the nearest
pyproject.toml > defaults. Each resolved value remembers where it came from."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "region": None,
    "pue": 1.0,
    "interval_s": 0.1,
    "quiet_interval_s": 1.0,
    "output_dir": "meter-runs",
    "gpus": "visible",
    "rapl_root": "/sys/class/powercap",
    "carbon": "offline",
    "cpu_power_w": None,
}
#: Bounds of the numbers a user sets: a PUE above this or an interval longer than an hour is a typo.
MAX_PUE = 10.0
MAX_INTERVAL_S = 3600.0

ENV = {
    "region": "METER_REGION",
    "pue": "METER_PUE",
    "interval_s": "METER_INTERVAL_S",
    "quiet_interval_s": "METER_QUIET_INTERVAL_S",
    "output_dir": "METER_OUTPUT_DIR",
    "gpus": "METER_GPUS",
    "rapl_root": "METER_RAPL_ROOT",
    "carbon": "METER_CARBON",
    "cpu_power_w": "METER_CPU_POWER_W",
}


@dataclass(frozen=True)
class Config:
    region: str | None
    pue: float
    interval_s: float
    output_dir: str
    gpus: Any
    rapl_root: str
    carbon: str = "offline"
    cpu_power_w: float | None = None  # W per busy hardware thread for the CPU estimate
    quiet_interval_s: float = 1.0  # the longest gap between ticks while no span enters or exits
    sources: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "pue": self.pue,
            "interval_s": self.interval_s,
            "quiet_interval_s": self.quiet_interval_s,
            "output_dir": os.path.abspath(self.output_dir),
            "gpus": self.gpus if isinstance(self.gpus, str) else list(self.gpus),
            "rapl_root": self.rapl_root,
            "carbon": self.carbon,
            "cpu_power_w": self.cpu_power_w,
            "sources": dict(self.sources),
        }


def _interval(name: str, value, source: str, default: float) -> float:
    interval = _float(name, value, source)
    if not interval > 0:
        raise ConfigError(f"{name}={interval} from {source}: the sampling interval must be > 0 seconds (default {default:g})")
    if interval < 0.001:
        raise ConfigError(f"{name}={interval} from {source}: below 1 ms the sampler costs more than it sees; use >= 0.001")
    if not interval <= MAX_INTERVAL_S:
        raise ConfigError(f"{name}={interval} from {source}: the run log is written every interval, so "
                          f"use at most {MAX_INTERVAL_S:g} s (default {default:g})")
    return interval


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"


def find_pyproject(start: str | None = None) -> str | None:
    """The nearest pyproject.toml at or above ``start`` (default: the working directory)."""
    d = os.path.abspath(start or os.getcwd())
    while True:
        p = os.path.join(d, "pyproject.toml")
        if os.path.isfile(p):
            return p
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def read_pyproject(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read [tool.meter] ({exc}); fix the file or move away from it") from exc
    table = data.get("tool", {}).get("meter", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.meter] must be a table")
    return table


def as_number(value: Any) -> int | float | None:
    """A Python number from an argument: ints and floats as they are, number-likes (numpy
    scalars, 0-d tensors, Decimal, Fraction) converted; None for booleans, text and the rest."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return None
    if type(value) in (int, float):
        return value
    dt = getattr(value, "dtype", None)
    if dt is not None and (getattr(dt, "kind", "") in ("b", "c") or str(dt) == "torch.bool"
                           or getattr(dt, "is_complex", False)):
        return None
    for conv in ("__index__", "__float__"):
        if hasattr(value, conv):
            try:
                return getattr(value, conv)()
            except (TypeError, ValueError, RuntimeError, OverflowError):
                continue
    return None


def _float(name: str, value: Any, where: str) -> float:
    # Text is how environment variables and TOML strings arrive; an argument must be a number.
    if isinstance(value, bool) or (where == "argument" and isinstance(value, (str, bytes))):
        raise ConfigError(f"{name}={value!r} from {where} is not a number; give one, e.g. {name}={DEFAULTS.get(name) or 1.0!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}={value!r} from {where} is not a number") from None


#: Live providers and the zones they take after the colon (``uk:GB-13``, ``electricitymaps:DE``).
CARBON_PROVIDERS = ("offline", "electricitymaps", "uk")
_EM_ZONE = re.compile(r"^[A-Z]{2,3}(-[A-Z0-9]{1,12}){0,3}$")
_UK_ZONE = re.compile(r"^(GB|UK)(-([1-9]|1[0-7]))?$")
CARBON_HELP = "use 'offline' (default), 'electricitymaps[:ZONE]' (e.g. electricitymaps:DE) or 'uk[:GB or GB-<regionid 1..17>]'"


def check_carbon(value: Any, where: str) -> str:
    """``provider[:ZONE]`` with the provider known and the zone well formed for it, normalised
    (provider lower case, zone upper case). Raises ConfigError with the accepted forms."""
    if not isinstance(value, str):
        raise ConfigError(f"carbon={value!r} from {where}: {CARBON_HELP}")
    provider, colon, zone = value.strip().partition(":")
    provider, zone = provider.strip().lower(), zone.strip().upper()
    if provider not in CARBON_PROVIDERS:
        raise ConfigError(f"carbon={value!r} from {where}: unknown provider {provider!r}; {CARBON_HELP}")
    if provider == "offline":
        if colon:
            raise ConfigError(f"carbon={value!r} from {where}: the offline tables take their zone from region=; "
                              f"use carbon='offline' and region={zone or 'FR'!r}")
        return "offline"
    if colon and not zone:
        raise ConfigError(f"carbon={value!r} from {where}: nothing after ':'; give a zone or drop the colon "
                          f"(the zone then comes from region=)")
    if zone and provider == "uk" and not _UK_ZONE.match(zone):
        raise ConfigError(f"carbon={value!r} from {where}: the UK Carbon Intensity API covers GB (national) and "
                          "GB-1..GB-17 (its region ids); see https://carbon-intensity.github.io/api-definitions/")
    if zone and provider == "electricitymaps" and not _EM_ZONE.match(zone):
        raise ConfigError(f"carbon={value!r} from {where}: {zone!r} is not an Electricity Maps zone key "
                          "(two or three letters, then '-' parts: DE, US-CAL-CISO, AUS-NSW)")
    return f"{provider}:{zone}" if zone else provider


def live_zone_ok(provider: str, zone: str) -> bool:
    """Whether ``zone`` (from region= when carbon= names none) is one ``provider`` can answer for."""
    if provider == "uk":
        return bool(_UK_ZONE.match(zone.upper()))
    return bool(_EM_ZONE.match(zone.upper()))


def _path(name: str, value: Any, where: str) -> str:
    try:
        p = os.fspath(value)
    except TypeError:
        raise ConfigError(f"{name}={value!r} from {where}: give a directory path (str or os.PathLike)") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p or "\x00" in p:
        raise ConfigError(f"{name}={value!r} from {where}: give a non-empty directory path")
    return p


def validate_gpus(value: Any, where: str) -> Any:
    if value is None:
        return "visible"
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in ("visible", "all"):
            return v.lower()
        if v.lower() in ("none", ""):
            return ()
        return tuple(p.strip() for p in v.split(",") if p.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"gpus={value!r} from {where}: GPU indices start at 0")
        return (str(value),)
    try:
        raw = tuple(value)
        if not all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in raw):
            raise TypeError
        items = tuple(str(v).strip() for v in raw)
    except TypeError:
        raise ConfigError(
            f"gpus={value!r} from {where}: use 'visible', 'all', 'none', an index, a UUID, or a list of them"
        ) from None
    for it in items:
        if it.startswith("-"):
            raise ConfigError(f"gpus entry {it!r} from {where}: GPU indices start at 0")
    return items


def resolve(args: Mapping[str, Any], environ: Mapping[str, str] | None = None, pyproject: str | None = None) -> Config:
    """Merge the sources and validate every value. Raises ConfigError with the fix."""
    environ = os.environ if environ is None else environ
    table = read_pyproject(pyproject if pyproject is not None else find_pyproject())
    for k in table:
        if k not in DEFAULTS:
            raise ConfigError(f"[tool.meter] has unknown key {k!r}{suggest(k, DEFAULTS)}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for k, default in DEFAULTS.items():
        if args.get(k) is not None:
            values[k], sources[k] = args[k], "argument"
        elif environ.get(ENV[k]):
            values[k], sources[k] = environ[ENV[k]], f"environment {ENV[k]}"
        elif k in table:
            values[k], sources[k] = table[k], "[tool.meter] in pyproject.toml"
        else:
            values[k], sources[k] = default, "default"

    pue = _float("pue", values["pue"], sources["pue"])
    if not 1.0 <= pue <= MAX_PUE:
        raise ConfigError(f"pue={pue} from {sources['pue']}: PUE is facility energy / IT energy, between 1 (no overhead) "
                          f"and {MAX_PUE:g}; data centres report 1.05-2")
    interval = _interval("interval_s", values["interval_s"], sources["interval_s"], 0.1)
    quiet = _interval("quiet_interval_s", values["quiet_interval_s"], sources["quiet_interval_s"], 1.0)
    cpu_power = values["cpu_power_w"]
    if cpu_power is not None:
        cpu_power = _float("cpu_power_w", cpu_power, sources["cpu_power_w"])
        if not 0 < cpu_power < 1000:
            raise ConfigError(f"cpu_power_w={cpu_power} from {sources['cpu_power_w']}: give the CPU's power per busy "
                              "hardware thread in watts (a server CPU's TDP / its threads, typically 2-10 W)")
    region = values["region"]
    if region is not None:
        if not isinstance(region, str):
            raise ConfigError(f"region={region!r} from {sources['region']}: give a zone code as text, e.g. 'FR', "
                              "'US-CA' or 'aws:eu-west-3' (list them with `meter regions`)")
        region = region.strip()
        if not region:
            region = None
    carbon = check_carbon(values["carbon"], sources["carbon"])
    return Config(
        carbon=carbon,
        region=region,
        pue=pue,
        interval_s=interval,
        quiet_interval_s=quiet,
        output_dir=_path("output_dir", values["output_dir"], sources["output_dir"]),
        gpus=validate_gpus(values["gpus"], sources["gpus"]),
        rapl_root=_path("rapl_root", values["rapl_root"], sources["rapl_root"]),
        cpu_power_w=cpu_power,
        sources=sources,
    )
