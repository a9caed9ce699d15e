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
from .threads import start_daemon
from .units import S_PER_HOUR

log = logging.getLogger("meter")

_ARG_NAMES = (
    "carbon", "cpu_power_w", "region", "pue", "interval_s", "quiet_interval_s", "output_dir", "gpus", "rapl_root", "run_name", "write", "sensors",
    "nvml", "clock", "cpu_tdp_w", "pid", "sync_cuda", "distributed", "environ", "pyproject", "argv",
)


class Meter:
    """Measures energy per stage. See DESIGN.md for the public contract.

    Arguments override ``METER_*`` environment variables, which override ``[tool.meter]`` in the
    nearest pyproject.toml, which override the defaults (region None = world average with a
    warning; pue 1.0; interval_s 0.1; quiet_interval_s 1.0; output_dir "meter-runs"; gpus "visible";
    rapl_root "/sys/class/powercap").

    The sampler ticks every ``interval_s`` while spans enter and exit; while none does, its ticks
    spread out (10% of the quiet time so far) up to ``quiet_interval_s``, and the next span edge
    brings them back. Span figures do not depend on it; ``quiet_interval_s=interval_s`` keeps the
    samples.csv cadence fixed.

    ``write=False`` keeps everything in memory (no run directory). ``sensors=`` replaces sensor
    discovery (tests, custom hardware); ``nvml=`` is a pynvml-compatible binding; ``clock=``
    provides ``monotonic()`` and ``wall()``. For the CPU estimate (no RAPL): ``cpu_power_w`` is
    the power of one busy hardware thread (also ``METER_CPU_POWER_W`` and ``[tool.meter]``),
    ``cpu_tdp_w`` the package TDP to divide by its threads; ``pid`` attributes the CPU/RAM
    estimate to another process tree, or ``"children"`` to this process's children (``meter run``).
    ``argv`` is the command line run.json records (default: this process's ``sys.argv``; ``[]``
    records none); values of secret-looking arguments are masked either way.
    """

    def __init__(self, region: str | None = None, pue: float | None = None, interval_s: float | None = None,
                 output_dir: str | None = None, gpus: Any = None, rapl_root: str | None = None, *,
                 carbon: str | None = None, cpu_power_w: float | None = None, quiet_interval_s: float | None = None,
                 run_name: str | None = None, write: bool = True,
                 sensors: list | None = None, nvml: Any = None, clock: Any = None, cpu_tdp_w: float | None = None,
                 pid: int | None = None, sync_cuda: bool = True, distributed: bool = True,
                 environ: dict | None = None, pyproject: str | None = None, argv: list | None = None, **unknown: Any):
        if unknown:
            k = next(iter(unknown))
            raise ConfigError(f"Meter() got an unknown argument {k!r}{config_mod.suggest(k, _ARG_NAMES)}")
        _check_objects(environ=environ, clock=clock, sensors=sensors)
        self.config = config_mod.resolve(
            {"region": region, "pue": pue, "interval_s": interval_s, "output_dir": output_dir, "gpus": gpus,
             "rapl_root": rapl_root, "carbon": carbon, "cpu_power_w": cpu_power_w,
             "quiet_interval_s": quiet_interval_s}, environ, pyproject)
        _check_args(cpu_tdp_w=cpu_tdp_w, pid=pid, run_name=run_name, write=write, sync_cuda=sync_cuda,
                    distributed=distributed)
        if argv is not None and not isinstance(argv, (str, bytes)):
            try:
                argv = list(argv)
            except TypeError:
                pass
        if argv is not None and (not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)):
            raise ConfigError(f"argv={argv!r}: give a list of strings (the command line to record), or [] for none")
        self._argv = argv
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
        self._distributed = distributed
        self.rank = rank_info(None if environ is None else self._environ) if distributed else None
        self.ownership = None  # decided with the other ranks when the Meter starts
        if write:
            from .runlog import check_writable

            check_writable(self.config.output_dir)
        if self.config.region is not None:
            from . import carbon

            carbon.check_region(self.config.region)
        _check_live_zone(self.config)
        _process.register(self)
        if sensors is None:
            _prefetch(self.config.gpus != (), init_nvml=nvml is None)

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

            self._refresh_rank()
            dist_info = _describe_rank(self.rank, self._environ)
            self.ownership = _ownership(self.rank, self._environ, self.config.output_dir)

            def discover() -> Discovery:
                if self._nvml is None:
                    _nvml_warmed.wait(NVML_WARM_WAIT_S)  # never two nvmlInit calls at once
                d = discover_sensors(self.config, given=self._given_sensors, nvml=self._nvml,
                                     cpu_tdp_w=self._cpu_tdp_w, pid=self._pid, environ=self._environ,
                                     owner=self.ownership)
                if dist_info is not None and self.ownership is not None:
                    dist_info.update(self.ownership.describe())  # the decisions, into run.json
                return d

            try:
                self._session = open_session(
                    config=self.config, clock=self.clock, discovery_fn=discover, write=self._write,
                    run_id=make_run_id(self.clock, self.run_name, self.rank), run_name=self.run_name,
                    interval_fn=lambda d: (safe_interval(self.config.interval_s, d), safe_interval(
                        max(self.config.quiet_interval_s, self.config.interval_s), d, "quiet_interval_s")),
                    distributed=dist_info, argv=self._argv)
            except MeterError:
                raise
            except Exception as exc:  # noqa: BLE001 - any sensor trouble becomes one clear error
                raise SensorError(f"meter could not start its sensors ({type(exc).__name__}: {exc}); run "
                                  "`meter doctor` to see which sensor fails, or pass gpus='none' / rapl_root=") from exc
            self._state = "running"
            self._finalizer = _close_when_dropped(self, self._session)
            _warn_if_many_running()
            if self.config.carbon.partition(":")[0] != "offline" or (self.config.region or "").lower() == "auto":
                self._carbon_source().start()
        return self

    def _refresh_rank(self) -> None:
        """An initialised process group knows the rank better than the environment did when this
        Meter was made (``torch.multiprocessing.spawn``, or ``init_process_group`` after it)."""
        if self._distributed and self._environ is os.environ:
            from .distributed import rank_info

            self.rank = rank_info() or self.rank

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sampler, record spans still open as incomplete, write every pending record
        and the final run.json, close the sensors. Idempotent; never raises for the disk or a
        sensor; waits at most about ``timeout_s`` for a hung sensor call."""
        timeout_s = check_timeout("timeout_s", timeout_s)
        with self._lock:
            if self._state in ("closed", "forked"):
                self._state = "closed" if self._state == "closed" else self._state
                return
            session, self._state = self._session, "closed"
            fin = getattr(self, "_finalizer", None)
            if fin is not None:
                fin.detach()
        if session is not None:
            extra = {"carbon": self._carbon.describe()} if self._carbon is not None else {}
            extra.update(_clock_drift(self.clock))
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
        timeout_s = check_timeout("timeout_s", timeout_s)
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
        if span.inert and self._state == "closed" and not getattr(self, "_warned_closed", False):
            self._warned_closed = True
            log.warning("meter: span %r was opened on a closed Meter and measured nothing; create a new Meter "
                        "(or use meter.track, whose default Meter is recreated after close)", span.path)
        if span.inert:
            if span._pending:
                span._read_pending()
            if span._end is None:
                span._end = (self.clock.monotonic(), self.clock.wall())
                span._notes = (self._inert_note(),)
            return
        if self._sync_cuda:
            _sync_cuda()
        if span._pending:
            span._read_pending()
        if span._open_children > 0 and span._end is None:
            self._close_children(span)
        self._session.exit(span)

    def _close_children(self, span: Span) -> None:
        """A span exits while spans opened inside it are still open (exits out of order): those
        close first, now, as incomplete, so that no child outlasts its parent and the parent's
        energy is never below a child's. Their own exits later change nothing. Warned once."""
        from .spans import open_descendants, release_parent

        children = open_descendants(span, self._session.recorder.open_spans())
        for child in children:
            if child._pending:
                child._read_pending()
            child._status = "incomplete"
            child._notes = child._notes + (f"incomplete: closed when its parent {span.path!r} exited first "
                                           "(spans exited out of order)",)
            self._session.exit(child)
            release_parent(child)
        if children and not getattr(self, "_warned_order", False):
            self._warned_order = True
            log.warning("meter: span %r exited while %s inside it were open; they were closed with it as incomplete "
                        "(exit spans in the reverse order of entry, e.g. with nested with-blocks)",
                        span.path, ", ".join(repr(c.path) for c in children[:3]) + (" ..." if len(children) > 3 else ""))

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


#: More Meters than this running at once is most likely a notebook cell re-run without close().
MANY_RUNNING = 4
_warned_many = False


def _warn_if_many_running() -> None:
    global _warned_many
    running = [m for m in list(_process._meters) if m._state == "running"]
    if len(running) > MANY_RUNNING and not _warned_many:
        _warned_many = True
        log.warning("meter: %d Meters are running in this process, each sampling and writing its own run "
                    "(a notebook cell re-run?); close() the ones you no longer need, or use `with Meter() as m:`",
                    len(running))


def _close_when_dropped(meter: "Meter", session):
    """A running Meter nobody references any more (``m = Meter()`` re-run in a notebook) closes its
    run, on a thread of its own (the collector may run on the sampler's thread): its records are
    written, its thread and files released."""
    import weakref

    def close() -> None:
        start_daemon(_close_session_quietly, "meter-close", (session,))

    f = weakref.finalize(meter, close)
    f.atexit = False  # at exit _process closes the live ones
    return f


def _close_session_quietly(session) -> None:
    try:
        session.close(5.0, {})
    except Exception:  # noqa: BLE001 - a dropped Meter's close must never surface anywhere
        log.debug("meter: closing a dropped Meter's run failed", exc_info=True)


def check_timeout(name: str, value: Any) -> float:
    """A wait in seconds: a finite or infinite number >= 0 (infinite waits as long as the
    platform allows). Raises ConfigError naming the argument."""
    v = config_mod.as_number(value)
    if v is None or not v >= 0:  # NaN too
        raise ConfigError(f"{name}={value!r}: give a number of seconds >= 0, e.g. {name}=10")
    try:
        return min(float(v), threading.TIMEOUT_MAX)
    except OverflowError:
        return threading.TIMEOUT_MAX


def _check_args(*, cpu_tdp_w, pid, run_name, write, sync_cuda, distributed) -> None:
    """Meter() arguments that are not configuration sources (config.resolve checks those)."""
    for name, v in (("write", write), ("sync_cuda", sync_cuda), ("distributed", distributed)):
        if not isinstance(v, bool):
            raise ConfigError(f"{name}={v!r}: give True or False")
    tdp = config_mod.as_number(cpu_tdp_w)
    if cpu_tdp_w is not None and (tdp is None or not 0 < tdp < 1e5):
        raise ConfigError(f"cpu_tdp_w={cpu_tdp_w!r}: give the CPU package's TDP in watts, a number > 0 (e.g. 125)")
    if pid is not None and pid != "children" and hasattr(pid, "__index__") and not isinstance(pid, bool):
        pid = pid.__index__()
    if pid is not None and pid != "children" and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        raise ConfigError(f"pid={pid!r}: give a process id (an int > 0) whose tree the CPU estimate covers, "
                          "or 'children' for this process's children")
    if isinstance(pid, int) and not isinstance(pid, bool):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise ConfigError(f"pid={pid}: no such process; give the id of a running process") from None
        except (PermissionError, OSError):
            pass  # it exists (owned by another user); the estimate reports what it can read
    if run_name is not None and not isinstance(run_name, str):
        raise ConfigError(f"run_name={run_name!r}: give a string (it names the run directory, made safe)")


def _check_objects(*, environ, clock, sensors) -> None:
    from collections.abc import Mapping

    if environ is not None and not isinstance(environ, Mapping):
        raise ConfigError(f"environ={environ!r}: give a mapping of environment variables (like os.environ), or None")
    if clock is not None and not (callable(getattr(clock, "monotonic", None)) and callable(getattr(clock, "wall", None))):
        raise ConfigError(f"clock={clock!r}: give an object with monotonic() and wall() methods "
                          "(meter.testing.FakeClock), or None for the real clock")
    if sensors is not None:
        if isinstance(sensors, (str, bytes)) or not isinstance(sensors, (list, tuple)):
            raise ConfigError(f"sensors={sensors!r}: give a list of sensors (objects with channels, read() and close()), "
                              "or None to discover them")
        for s in sensors:
            if not (hasattr(s, "channels") and callable(getattr(s, "read", None))):
                raise ConfigError(f"sensors: {s!r} is not a sensor (it needs channels and read(); "
                                  "see meter.testing.FakeSensor)")


def _check_live_zone(config) -> None:
    """A live provider must have a zone it answers for: from ``carbon='provider:ZONE'`` or from
    ``region=`` (``auto`` is located at start). Refused now rather than failing at the first fetch."""
    provider, _, zone = config.carbon.partition(":")
    if provider == "offline" or zone:
        return
    region = config.region
    if region is None:
        raise ConfigError(f"carbon={config.carbon!r} needs a zone: set region= (e.g. region='DE') or "
                          f"carbon='{provider}:ZONE'")
    if region.lower() == "auto":
        return
    from . import carbon

    zone = carbon.resolve(region).zone
    if not config_mod.live_zone_ok(provider, zone):
        what = "Great Britain (GB, GB-1..GB-17)" if provider == "uk" else "Electricity Maps zone keys"
        raise ConfigError(f"carbon={config.carbon!r} with region={region!r} (zone {zone}): the provider covers {what} "
                          f"only; use carbon='offline' for this region, or name the zone: carbon='{provider}:ZONE'")


#: A system clock step larger than this during a run is recorded in run.json (NTP slews less).
CLOCK_STEP_NOTE_S = 1.0


def _clock_drift(clock) -> dict:
    """run.json's ``clock`` entry when the system clock was stepped during the run."""
    try:
        drift = float(clock.drift_s()) if hasattr(clock, "drift_s") else 0.0
    except Exception:  # noqa: BLE001 - a custom clock's trouble is no reason to lose the run
        return {}
    if abs(drift) <= CLOCK_STEP_NOTE_S:
        return {}
    log.warning("meter: the system clock moved by %+.1f s during the run; the run's times follow the monotonic "
                "clock from its start (durations are unaffected)", drift)
    return {"clock": {"system_clock_moved_s": round(drift, 3),
                      "note": "times are the start's UTC plus monotonic time; the system clock was set during the run"}}


def _ownership(info, environ, output_dir):
    if info is None:
        return None
    from .distributed import Ownership

    return Ownership(info, environ, output_dir)


_prefetched: set = set()
#: Set once the warm-up thread's nvmlInit returned (or was never started). ``start()`` waits for
#: it, at most NVML_WARM_WAIT_S, so that NVML is never initialised from two threads at once
#: (NVML serialises it; a library that re-reads its configuration at each init, like the
#: emulated one, could show another thread half its devices).
_nvml_warmed = threading.Event()
_nvml_warmed.set()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_nvml_warmed.set)  # the warm-up thread is not in the child
NVML_WARM_WAIT_S = 10.0


def _prefetch(gpus: bool, init_nvml: bool = False) -> None:
    """On a daemon thread, once per process: import what ``start()`` will need (the run's
    modules, pynvml, psutil), read what describes the host (codecarbon's CPU table, the CPU
    model) and, for GPUs through pynvml, initialise NVML (100s of ms on some multi-GPU hosts;
    NVML counts its initialisations, so the one ``start()`` makes is then immediate, and this
    one is held for the process), so the first span (a Trainer's first step) does not wait for
    it. Never raises; ``start()`` computes anything not ready yet itself."""
    key = "gpus" if gpus else "host"
    if key in _prefetched:
        return
    _prefetched.add(key)
    init_nvml = gpus and init_nvml and "nvml" not in _prefetched
    if init_nvml:
        _prefetched.add("nvml")
        _nvml_warmed.clear()  # before the thread starts: a start() from now on waits for its nvmlInit

    def work() -> None:
        try:
            from . import redact, runlog, sampler, session  # noqa: F401 - imported for start()
            from .sensors import estimate, rapl  # noqa: F401

            if gpus:
                try:
                    import pynvml
                except ImportError:
                    pynvml = None
                if pynvml is not None and init_nvml:
                    try:
                        pynvml.nvmlInit()
                    except Exception:  # noqa: BLE001 - no driver: start() says so, with the fix
                        pass
                _nvml_warmed.set()
            try:
                import psutil  # noqa: F401
            except ImportError:
                pass
            estimate.lookup_tdp(estimate.cpu_model())
            from .carbon import offline, source  # noqa: F401 - source: imported for the first figures

            offline.zones()  # the offline intensity table, read at a run's first figures
            from .hardware import describe_host

            describe_host()
        except Exception:  # noqa: BLE001 - a warm-up only
            log.debug("meter: background warm-up failed", exc_info=True)
        finally:
            _nvml_warmed.set()

    start_daemon(work, "meter-prefetch")


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
