"""Live carbon intensity, only when asked for: Electricity Maps (v3) and the UK National Grid
Carbon Intensity API, plus IP geolocation for ``region="auto"``.

One seam for the network: every function takes ``session=`` (a ``requests.Session``) and a base
URL, so tests run against a real local server. Timeouts on every call, retries with backoff on
429 and 5xx, a disk cache per (provider, zone, hour), and failures raised as CarbonError for
:func:`with_fallback` to turn into an offline figure that says why. Tokens travel only in
headers and never appear in messages, logs or records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ..errors import CarbonError
from ..redact import env_secrets, redact
from ..units import S_PER_HOUR

log = logging.getLogger("meter")

EM_BASE = "https://api.electricitymaps.com/v3"
UK_BASE = "https://api.carbonintensity.org.uk"
GEO_URL = "https://ipinfo.io/json"
TOKEN_ENV = "METER_ELECTRICITYMAPS_TOKEN"
PROVIDERS = ("electricitymaps", "uk")
TIMEOUT = (3.05, 10.0)
UK_MAX_RANGE_S = 14 * 86400


def default_cache_dir() -> str:
    base = os.environ.get("METER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meter"
    )
    return os.path.join(base, "carbon")


class Client:
    """HTTP GET with timeouts, retries on 429/5xx/timeouts, and clear CarbonErrors."""

    def __init__(self, session: Any = None, *, retries: int = 3, backoff_s: float = 0.5,
                 timeout: Any = TIMEOUT, sleep: Callable[[float], None] = time.sleep):
        if session is None:
            import requests

            session = requests.Session()
        self.session = session
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout = timeout
        self.sleep = sleep

    def get_json(self, url: str, *, params: dict | None = None, headers: dict | None = None, what: str) -> Any:
        """The JSON answer. Every CarbonError message is redacted: the request's header values
        (the token), secret-named environment variables and secret-looking text never appear,
        even when the server echoes them back."""
        secrets = [str(v) for v in (headers or {}).values()] + list(env_secrets())
        try:
            return self._get_json(url, params=params, headers=headers, what=what, secrets=secrets)
        except CarbonError as exc:
            raise CarbonError(redact(str(exc), secrets)) from None

    def _get_json(self, url: str, *, params: dict | None, headers: dict | None, what: str, secrets: list) -> Any:
        import requests

        last = ""
        for attempt in range(self.retries + 1):
            try:
                r = self.session.get(url, params=params, headers=headers or {}, timeout=self.timeout)
            except requests.Timeout:
                last = f"{what}: timed out after {self.timeout} s"
            except requests.RequestException as exc:
                last = f"{what}: {type(exc).__name__} ({_cause(exc)})"
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise CarbonError(f"{what}: malformed JSON in the response") from None
                body = _error_text(r, secrets)
                if r.status_code in (401, 403):
                    raise CarbonError(f"{what}: HTTP {r.status_code} {body}: the token was refused; check {TOKEN_ENV}")
                if r.status_code != 429 and r.status_code < 500:
                    raise CarbonError(f"{what}: HTTP {r.status_code} {body}")
                last = f"{what}: HTTP {r.status_code} {body}"
                retry_after = r.headers.get("Retry-After")
                if retry_after and retry_after.isdigit() and attempt < self.retries:
                    self.sleep(min(float(retry_after), 30.0))
                    continue
            if attempt < self.retries:
                self.sleep(self.backoff_s * (2**attempt))
        raise CarbonError(f"{last} (after {self.retries + 1} attempts)")


def _cause(exc: BaseException) -> str:
    """The innermost cause of a requests error, whole and short: 'Name or service not known',
    'Connection refused', not urllib3's chain of pool and URL reprs cut in the middle."""
    inner = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    text = str(inner)
    if "] " in text and text.count("[Errno") == 1:  # '<...>: [Errno -2] Name or service not known'
        text = text[text.index("[Errno"):]
    return text if len(text) <= 200 else text[:197] + "..."


def _error_text(r: Any, secrets: list | tuple = ()) -> str:
    """The server's error message, redacted before it is cut (a cut must not leave half a token)."""
    try:
        data = r.json()
    except ValueError:
        return redact(r.text or "", secrets)[:120].strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return redact(str(err.get("message") or err), secrets)[:200]
        return redact(str(err or data.get("message") or ""), secrets)[:200]
    return ""


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uk_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- cache -------------------------------------------------------------------------------------


def cache_key(text: str) -> str:
    """One safe path component for a provider or zone: ``DE``, ``GB-13`` stay as they are;
    anything else (``..``, ``a/b``, ``../../etc``) is made safe and given a short hash of the
    original, so two zones never share a cache directory."""
    import hashlib

    from ..runlog import safe_component

    safe = safe_component(text, "zone")
    if safe != text:
        safe = f"{safe[:40]}-{hashlib.sha256(str(text).encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return safe


class Cache:
    """Points per (provider, zone, UTC hour) on disk. Only hours fully in the past are stored."""

    def __init__(self, root: str | None):
        self.root = root

    def _path(self, provider: str, zone: str, hour: int) -> str:
        stamp = datetime.fromtimestamp(hour * S_PER_HOUR, tz=timezone.utc).strftime("%Y%m%dT%H")
        path = os.path.join(self.root, cache_key(provider), cache_key(zone), f"{stamp}.json")
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:  # a symlink planted in the cache
            raise OSError(f"carbon cache path {path} leads outside {self.root}")
        return path

    def get(self, provider: str, zone: str, start: float, end: float) -> list | None:
        if not self.root:
            return None
        points = []
        for hour in range(int(start // S_PER_HOUR), int(end // S_PER_HOUR) + 1):
            try:
                with open(self._path(provider, zone, hour), encoding="utf-8") as f:
                    points.extend(json.load(f))
            except (OSError, ValueError):
                return None
        return points

    def put(self, provider: str, zone: str, points: list, now: float) -> None:
        if not self.root:
            return
        by_hour: dict[int, list] = {}
        for p in points:
            if p[1] <= now and p[3]:  # closed interval, from measured (not forecast) data
                by_hour.setdefault(int(p[0] // S_PER_HOUR), []).append(p)
        for hour, pts in by_hour.items():
            if (hour + 1) * S_PER_HOUR > now:
                continue
            try:
                path = self._path(provider, zone, hour)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(pts, f)
                os.replace(tmp, path)
            except OSError as exc:
                log.debug("meter: carbon cache not written (%s)", exc)


# -- providers ---------------------------------------------------------------------------------
# A point is [from_epoch, to_epoch, g_per_kwh, measured(bool)].


def _em_points(items: list, what: str) -> list:
    pts = []
    for it in items:
        if not isinstance(it, dict) or it.get("carbonIntensity") is None or "datetime" not in it:
            raise CarbonError(f"{what}: a point lacks carbonIntensity or datetime")
        try:
            t0 = _epoch(str(it["datetime"]))
            g = float(it["carbonIntensity"])
        except (TypeError, ValueError, OverflowError):
            raise CarbonError(f"{what}: a point has a malformed datetime or carbonIntensity") from None
        if not (0.0 <= g < 1e5):
            raise CarbonError(f"{what}: carbonIntensity {g!r} is not a plausible gCO2eq/kWh")
        gran = it.get("temporalGranularity") or "hourly"
        step = {"5_minutes": 300, "15_minutes": 900, "hourly": S_PER_HOUR}.get(gran, S_PER_HOUR)
        pts.append([t0, t0 + step, g, not it.get("isEstimated", False)])
    return pts


def electricitymaps(zone: str, start: float, end: float, *, token: str | None, base_url: str | None,
                    client: Client, now: float) -> tuple[list, dict]:
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        raise CarbonError(f"Electricity Maps needs an API token: set {TOKEN_ENV}")
    base = (base_url or EM_BASE).rstrip("/")
    headers = {"auth-token": token}
    meta = {"provider": "Electricity Maps", "factor": "lifecycle", "kind": "average"}
    if start >= now - 24 * S_PER_HOUR:
        data = client.get_json(f"{base}/carbon-intensity/history", params={"zone": zone}, headers=headers,
                               what=f"Electricity Maps history for {zone}")
        items = data.get("history") if isinstance(data, dict) else None
    else:
        data = client.get_json(f"{base}/carbon-intensity/past-range",
                               params={"zone": zone, "start": _iso(start), "end": _iso(end)}, headers=headers,
                               what=f"Electricity Maps past-range for {zone}")
        items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise CarbonError(f"Electricity Maps for {zone}: response has no history/data list")
    pts = [p for p in _em_points(items, f"Electricity Maps {zone}") if p[1] > start and p[0] < end]
    if not pts:
        latest = client.get_json(f"{base}/carbon-intensity/latest", params={"zone": zone}, headers=headers,
                                 what=f"Electricity Maps latest for {zone}")
        pts = _em_points([latest], f"Electricity Maps latest {zone}")
        meta["note"] = "no history point covers the run; latest value used"
        pts = [[min(start, pts[0][0]), max(end, pts[0][1]), pts[0][2], False]]
    if items and isinstance(items[0], dict) and items[0].get("emissionFactorType"):
        meta["factor"] = items[0]["emissionFactorType"]
    return pts, meta


def uk(zone: str, start: float, end: float, *, base_url: str | None, client: Client, now: float) -> tuple[list, dict]:
    base = (base_url or UK_BASE).rstrip("/")
    region = None
    if zone.upper() not in ("GB", "UK"):
        tail = zone.split("-", 1)[-1]
        if not tail.isdigit():
            raise CarbonError(f"UK Carbon Intensity zone {zone!r}: use GB (national) or GB-<regionid 1..17>")
        region = int(tail)
    pts = []
    t = start - (start % 1800)
    while t < end:
        t2 = min(end, t + UK_MAX_RANGE_S)
        what = f"UK Carbon Intensity {zone} {_uk_iso(t)}..{_uk_iso(t2)}"
        if region is None:
            url = f"{base}/intensity/{_uk_iso(t)}/{_uk_iso(t2)}"
        else:
            url = f"{base}/regional/intensity/{_uk_iso(t)}/{_uk_iso(t2)}/regionid/{region}"
        data = client.get_json(url, headers={"Accept": "application/json"}, what=what)
        items = data.get("data") if isinstance(data, dict) else None
        if isinstance(items, dict):  # regional responses nest the series one level down
            items = items.get("data")
        elif isinstance(items, list) and items and isinstance(items[0], dict) and "data" in items[0] and region is not None:
            items = items[0]["data"]
        if not isinstance(items, list):
            raise CarbonError(f"{what}: response has no data list")
        for it in items:
            try:
                inten = it["intensity"]
                value = inten.get("actual")
                measured = value is not None
                if value is None:
                    value = inten["forecast"]
                pts.append([_epoch(it["from"]), _epoch(it["to"]), float(value), measured])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise CarbonError(f"{what}: malformed point {str(it)[:80]}") from None
        t = t2
    meta = {"provider": "UK National Grid ESO Carbon Intensity API (CC BY 4.0)", "factor": "operational", "kind": "average"}
    forecasts = sum(1 for p in pts if not p[3])
    if forecasts:
        meta["note"] = f"{forecasts} half-hour(s) had no actual value yet; forecast used"
    return pts, meta


def live_points(provider: str, zone: str, start: float, end: float, *, token: str | None = None,
                base_url: str | None = None, session: Any = None, cache_dir: str | None = "default",
                client: Client | None = None, now: float | None = None) -> tuple[list, dict]:
    """Intensity points covering [start, end] (UTC epoch s) from a provider, cached per hour."""
    if provider not in PROVIDERS:
        raise CarbonError(f"unknown carbon provider {provider!r}; use one of {', '.join(PROVIDERS)} or 'offline'")
    now = time.time() if now is None else now
    cache = Cache(default_cache_dir() if cache_dir == "default" else cache_dir)
    cached = cache.get(provider, zone, start, end)
    if cached:
        meta = {"electricitymaps": {"provider": "Electricity Maps", "factor": "lifecycle", "kind": "average"},
                "uk": {"provider": "UK National Grid ESO Carbon Intensity API (CC BY 4.0)", "factor": "operational", "kind": "average"}}[provider]
        return cached, {**meta, "note": "from meter's carbon cache"}
    client = client or Client(session)
    try:
        if provider == "electricitymaps":
            pts, meta = electricitymaps(zone, start, end, token=token, base_url=base_url, client=client, now=now)
        else:
            pts, meta = uk(zone, start, end, base_url=base_url, client=client, now=now)
    except CarbonError as exc:  # a malformed point may echo the token too
        raise CarbonError(redact(str(exc), [token, os.environ.get(TOKEN_ENV), *env_secrets()])) from None
    cache.put(provider, zone, pts, now)
    return pts, meta


def intensity_from_points(pts: list, meta: dict, zone: str, start: float, end: float):
    """An :class:`~meter.carbon.Intensity` with a time series from provider points."""
    from .intensity import Intensity

    # Time-weighted mean over the overlap with the window, for energy outside any point.
    num = den = 0.0
    for a, b, g, _m in pts:
        w = max(0.0, min(b, end) - max(a, start))
        num += g * w
        den += w
    mean = num / den if den > 0 else sum(p[2] for p in pts) / len(pts)
    year = datetime.fromtimestamp(start, tz=timezone.utc).year
    return Intensity(zone=zone, name=f"{zone} ({meta.get('provider', 'live')})", g_per_kwh=mean,
                     source=meta.get("provider", "live"), year=year, kind=meta.get("kind", "average"),
                     factor=meta.get("factor", "unspecified"), method="live", note=meta.get("note", ""),
                     series=tuple((a, b, g) for a, b, g, _m in pts))


def live_intensity(provider: str, zone: str, start: float, end: float, **kw: Any):
    """An :class:`~meter.carbon.Intensity` with a time series for [start, end]. Raises CarbonError."""
    pts, meta = live_points(provider, zone, start, end, **kw)
    return intensity_from_points(sorted(pts), meta, zone, start, end)


def with_fallback(provider: str, zone: str, start: float, end: float, offline_intensity, **kw: Any):
    """Live intensity, or the offline figure with ``method="fallback"`` and the reason recorded."""
    from dataclasses import replace

    try:
        return live_intensity(provider, zone, start, end, **kw)
    except CarbonError as exc:
        why = redact(str(exc), [kw.get("token"), *env_secrets()])
        log.warning("meter: live carbon intensity from %s failed (%s); using the offline figure for %s",
                    provider, why, offline_intensity.zone)
        note = f"live {provider} failed: {why}; offline figure used"
        return replace(offline_intensity, method="fallback", note="; ".join(x for x in (offline_intensity.note, note) if x))


def geolocate(url: str | None = None, session: Any = None, timeout: float = 2.0) -> tuple[str, str]:
    """(zone key, how) from the public IP's location; only for ``region="auto"``."""
    from .offline import lookup

    url = url or os.environ.get("METER_GEO_URL") or GEO_URL
    client = Client(session, retries=0, timeout=timeout)
    data = client.get_json(url, what=f"IP geolocation ({url.split('/')[2] if '//' in url else url})")
    if not isinstance(data, dict) or not data.get("country"):
        raise CarbonError("IP geolocation answered without a country")
    country = str(data["country"]).upper()
    region = str(data.get("region") or "")
    zone = country
    if country in ("US", "CA", "CN") and region:
        z = lookup(region)
        if z is not None and z.key.startswith(country + "-"):
            zone = z.key
    how = f"IP geolocation via {url}: country {country}" + (f", region {region}" if region else "") + f" -> zone {zone}"
    return zone, how
