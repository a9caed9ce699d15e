"""``Meter``: the facade. Configuration, start/close/flush, ``track``, and the span owner.

The parts of a running measurement live in :mod:`meter.session`; process hooks in
:mod:`meter._process`. The only global is the lazily created default Meter behind
``meter.track``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from . import _process
from . import config as config_mod
from .clock import SystemClock
from .errors import ConfigError, MeterError, SensorError
from .measurement import Measurement
from .sensors import Discovery
from .spans import Span, Track, build_measurement
from .units import S_PER_HOUR

log = logging.getLogger("meter")

_ARG_NAMES = (
    "carbon", "cpu_power_w", "region", "pue", "interval_s", "output_dir", "gpus", "rapl_root", "run_name", "write", "sensors",
    "nvml", "clock", "cpu_tdp_w", "pid", "sync_cuda", "distributed", "environ", "pyproject",
)


class Meter:
    """Measures energy per stage. See DESIGN.md for the public contract.

    Arguments override ``METER_*`` environment variables, which override ``[tool.meter]`` in the
    nearest pyproject.toml, which override the defaults (region None = world average with a
    warning; pue 1.0; interval_s 0.1; output_dir "meter-runs"; gpus "visible";
    rapl_root "/sys/class/powercap").

    ``write=False`` keeps everything in memory (no run directory). ``sensors=`` replaces sensor
    discovery (tests, custom hardware); ``nvml=`` is a pynvml-compatible binding; ``clock=``
    provides ``monotonic()`` and ``wall()``. For the CPU estimate (no RAPL): ``cpu_power_w`` is
    the power of one busy hardware thread (also ``METER_CPU_POWER_W`` and ``[tool.meter]``),
    ``cpu_tdp_w`` the package TDP to divide by its threads; ``pid`` attributes the CPU/RAM
    estimate to another process tree, or ``"children"`` to this process's children (``meter run``).
    """

    def __init__(self, region: str | None = None, pue: float | None = None, interval_s: float | None = None,
                 output_dir: str | None = None, gpus: Any = None, rapl_root: str | None = None, *,
                 carbon: str | None = None, cpu_power_w: float | None = None, run_name: str | None = None, write: bool = True,
                 sensors: list | None = None, nvml: Any = None, clock: Any = None, cpu_tdp_w: float | None = None,
                 pid: int | None = None, sync_cuda: bool = True, distributed: bool = True,
                 environ: dict | None = None, pyproject: str | None = None, **unknown: Any):
        if unknown:
            k = next(iter(unknown))
            raise ConfigError(f"Meter() got an unknown argument {k!r}{config_mod.suggest(k, _ARG_NAMES)}")
        self.config = config_mod.resolve(
            {"region": region, "pue": pue, "interval_s": interval_s, "output_dir": output_dir, "gpus": gpus,
             "rapl_root": rapl_root, "carbon": carbon, "cpu_power_w": cpu_power_w}, environ, pyproject)
        if cpu_tdp_w is not None and not (isinstance(cpu_tdp_w, (int, float)) and 0 < cpu_tdp_w < 1e5):
            raise ConfigError(f"cpu_tdp_w={cpu_tdp_w!r}: give the CPU's TDP in watts, > 0")
        self._environ = os.environ if environ is None else environ
        self.clock = clock or SystemClock()
        self._write = write
        self._given_sensors = sensors
        self._nvml = nvml
        self._cpu_tdp_w = cpu_tdp_w
        self._pid = pid
        self._sync_cuda = sync_cuda
        self.run_name = run_name
        self._lock = threading.Lock()
        self._state = "new"  # new | running | closed | forked
        self._session = None
        self._carbon = None
        from .distributed import rank_info

        # In a torchrun or Slurm job: which devices this rank owns (see meter.distributed).
        self.rank = rank_info(self._environ) if distributed else None
        if write:
            from .runlog import check_writable

            check_writable(self.config.output_dir)
        if self.config.region is not None:
            from . import carbon

            carbon.check_region(self.config.region)
        _process.register(self)
        if sensors is None:
            _prefetch(self.config.gpus != ())

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """True while new spans are measured (not closed, not in a forked child)."""
        return self._state in ("new", "running")

    def start(self) -> "Meter":
        """Discover sensors, write run.json and start the sampler (the first span does this).

        Raises :class:`SensorError` or :class:`RunLogError` (with the fix) if that fails, after
        closing whatever it had opened; :class:`ConfigError` for a bad ``gpus`` selection."""
        with self._lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise MeterError(f"this Meter is {self._state}; create a new Meter")
            from .session import discover_sensors, make_run_id, open_session, safe_interval

            def discover() -> Discovery:
                return discover_sensors(self.config, given=self._given_sensors, nvml=self._nvml,
                                        cpu_tdp_w=self._cpu_tdp_w, pid=self._pid, environ=self._environ,
                                        rank=self.rank)

            try:
                self._session = open_session(
                    config=self.config, clock=self.clock, discovery_fn=discover, write=self._write,
                    run_id=make_run_id(self.clock, self.run_name, self.rank), run_name=self.run_name,
                    interval_fn=lambda d: safe_interval(self.config.interval_s, d),
                    distributed=_describe_rank(self.rank, self._environ))
            except MeterError:
                raise
            except Exception as exc:  # noqa: BLE001 - any sensor trouble becomes one clear error
                raise SensorError(f"meter could not start its sensors ({type(exc).__name__}: {exc}); run "
                                  "`meter doctor` to see which sensor fails, or pass gpus='none' / rapl_root=") from exc
            self._state = "running"
            if self.config.carbon.partition(":")[0] != "offline" or (self.config.region or "").lower() == "auto":
                self._carbon_source().start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sampler, record spans still open as incomplete, write every pending record
        and the final run.json, close the sensors. Idempotent; never raises for the disk or a
        sensor; waits at most about ``timeout_s`` for a hung sensor call."""
        with self._lock:
            if self._state in ("closed", "forked"):
                self._state = "closed" if self._state == "closed" else self._state
                return
            session, self._state = self._session, "closed"
        if session is not None:
            extra = {"carbon": self._carbon.describe()} if self._carbon is not None else {}
            try:
                session.close(timeout_s, extra)
            except Exception:  # noqa: BLE001 - close() must never raise into user code
                log.exception("meter: closing the run failed; records written so far are kept")
        if self._carbon is not None:
            self._carbon.close()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Ask the sampler thread to write every closed span and a sample row now, and wait for
        it (at most ``timeout_s``). True when done; False before the first span, after close,
        in a forked child, or on timeout."""
        s = self._session
        if s is None or self._state != "running":
            return False
        return s.sampler.request_tick(wait=True, timeout=timeout_s)

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        if self._state in ("new", "running"):
            self._state = "forked"
        if self._session is not None:
            self._session.after_fork_child()

    # -- what the run is -----------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self._session.run_id if self._session is not None else None

    @property
    def run_dir(self) -> str | None:
        return self._session.run_dir if self._session is not None else None

    @property
    def discovery(self) -> Discovery | None:
        return self._session.discovery if self._session is not None else None

    def sensors_report(self) -> dict[str, Any]:
        """What was found, what was not and why (starts the meter if needed)."""
        self.start()
        d = self._session.discovery
        return {"channels": [c.describe() for c in self._session.odometer.channels],
                "unavailable": [u.describe() for u in d.unavailable], "notes": list(d.notes)}

    # -- spans ---------------------------------------------------------------------------------
    def track(self, name: str, *, samples: Any = None, tokens: Any = None, flops: Any = None,
              output_tokens: Any = None, tags: dict | None = None, **unknown: Any) -> Track:
        """A stage to measure: ``with m.track("train"):`` or ``@m.track("eval")``.

        ``samples``, ``tokens``, ``output_tokens`` and ``flops`` may be given up front or added
        with ``span.add``; ``tags`` are free-form labels (model, seq_len, batch size) carried
        into the record.
        """
        counts = {"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops, **unknown}
        return Track(self, name, counts, tags)

    def _enter_span(self, span: Span) -> None:
        if self._state == "new":
            self.start()
        s = self._session
        if self._state != "running" or s is None:
            span.inert = True
            span._start = (self.clock.monotonic(), self.clock.wall())
            return
        if self._sync_cuda:
            _sync_cuda()  # work queued before the span belongs to the stage before it
        s.enter(span)

    def _exit_span(self, span: Span) -> None:
        if span.inert:
            if span._end is None:
                span._end = (self.clock.monotonic(), self.clock.wall())
                span._notes = (self._inert_note(),)
            return
        if self._sync_cuda:
            _sync_cuda()
        self._session.exit(span)

    def _inert_note(self) -> str:
        if self._state == "forked":
            return (f"not measured: opened in a forked child (pid {os.getpid()}) of the measuring process; "
                    "the parent's spans include this work")
        return "not measured: the Meter was already closed"

    def _snapshot_span(self, span: Span) -> Measurement:
        s = self._session
        if span.inert or s is None or self._state == "forked":
            end = (self.clock.monotonic(), self.clock.wall())
            return build_measurement(span, end, {}, "open", (self._inert_note(),))
        return s.snapshot(span)

    def _span_emissions_g(self, span: Span, result: Measurement) -> float | None:
        """gCO2eq of a span (so far), from memory only: never the network."""
        timeline = self._session.timeline if self._session is not None else None
        return self._carbon_source().emissions_g(result, self.config.pue, timeline)

    # -- carbon --------------------------------------------------------------------------------
    def _carbon_source(self):
        if self._carbon is None:
            from .carbon.source import IntensitySource

            self._carbon = IntensitySource(self.config.region, self.config.carbon, now=self.clock.wall)
        return self._carbon

    def intensity(self, start_s: float | None = None, end_s: float | None = None):
        """Carbon intensity for this Meter's region (and live provider, if configured) over a UTC
        window (default: the last hour), from what is known now: never waits on the network."""
        now = self.clock.wall()
        return self._carbon_source().for_window(now - S_PER_HOUR if start_s is None else start_s,
                                                now if end_s is None else end_s)


_prefetched: set = set()


def _prefetch(gpus: bool) -> None:
    """On a daemon thread, once per process: import what ``start()`` will need (the run's
    modules, pynvml, psutil) and read what describes the host (codecarbon's CPU table, the CPU
    model), so the first span (a Trainer's first step) does not wait for it. Never raises;
    ``start()`` computes anything not ready yet itself."""
    key = "gpus" if gpus else "host"
    if key in _prefetched:
        return
    _prefetched.add(key)

    def work() -> None:
        try:
            from . import runlog, sampler, session  # noqa: F401 - imported for start()
            from .sensors import estimate, rapl  # noqa: F401

            if gpus:
                try:
                    import pynvml  # noqa: F401
                except ImportError:
                    pass
            try:
                import psutil  # noqa: F401
            except ImportError:
                pass
            estimate.lookup_tdp(estimate.cpu_model())
            from .carbon import offline

            offline.zones()  # the offline intensity table, read at a run's first figures
            from .hardware import describe_host

            describe_host()
        except Exception:  # noqa: BLE001 - a warm-up only
            log.debug("meter: background warm-up failed", exc_info=True)

    threading.Thread(target=work, name="meter-prefetch", daemon=True).start()


def _describe_rank(info, environ=None) -> dict | None:
    from .distributed import describe

    return describe(info, environ)


def _sync_cuda() -> None:
    """Wait for queued CUDA work so it is charged to the span that launched it (no-op without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a sync failure must not break the user's stage exit
        pass


_default: Meter | None = None
_default_lock = threading.Lock()


def default_meter() -> Meter:
    """The Meter behind ``meter.track``, created on first use from environment and pyproject."""
    global _default
    m = _default
    # A closed default is replaced; in a forked child the parent's stays (inert: the parent measures).
    if m is None or m._state == "closed":
        with _default_lock:
            if _default is None or _default._state == "closed":
                _default = Meter()
            m = _default
    return m


def track(name: str, *, samples: Any = None, tokens: Any = None, flops: Any = None, output_tokens: Any = None,
          tags: dict | None = None, **unknown: Any) -> Track:
    """Measure a stage: ``with meter.track("finetune"):`` or as a decorator. Inside an open span
    it nests under that span's Meter; otherwise it uses the default Meter, created on first use
    and configured from ``METER_*`` and pyproject.toml."""
    counts = {"samples": samples, "tokens": tokens, "output_tokens": output_tokens, "flops": flops, **unknown}
    return Track(None, name, counts, tags, resolve=default_meter)
