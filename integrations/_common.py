"""What the Trainer, Lightning and loop integrations share: device-side counts, budgets, forecasts,
the figures they log, and the deferred card writer. Public meter API only; imports no framework.
"""

from __future__ import annotations

import atexit
import logging
import math
import weakref
from typing import Any

import meter
from meter.units import j_to_kwh

log = logging.getLogger("meter")

BUDGET_ACTIONS = ("stop", "warn")


def missing(extra: str | None, package: str, module: str, exc: ImportError) -> ImportError:
    """The ImportError an integration raises when its framework is not installed: what to
    install. Frameworks that pull torch have no meter extra (the CPU or CUDA build of torch is
    the user's choice), so the hint names the package itself."""
    how = f'pip install "meter-ml[{extra}]"' if extra else f"pip install {package} (after the torch build you want)"
    err = ImportError(f"{module} needs {package}, which is not installed: {how} ({exc})")
    err.name = package
    return err


class Tally:
    """Counts for one span, kept without synchronising the device: samples are host-side shapes;
    tokens and output tokens may be device tensors (``mask.sum()``), summed on the device and
    read only when :meth:`flush` moves them into the span (at log time and at close)."""

    __slots__ = ("samples", "tokens", "output_tokens", "flops")

    def __init__(self) -> None:
        self.samples = 0
        self.tokens: Any = 0
        self.output_tokens: Any = 0
        self.flops = 0.0

    def add(self, samples: int | None = None, tokens: Any = None, output_tokens: Any = None, flops: float | None = None) -> None:
        if samples:
            self.samples += samples
        if tokens is not None:
            self.tokens = tokens if isinstance(self.tokens, int) and self.tokens == 0 else self.tokens + tokens
        if output_tokens is not None:
            self.output_tokens = (output_tokens if isinstance(self.output_tokens, int) and self.output_tokens == 0
                                  else self.output_tokens + output_tokens)
        if flops:
            self.flops += flops

    def flush(self, span) -> None:
        """Add everything counted so far to ``span`` and start again from zero (one device read)."""
        tokens, out = _value(self.tokens), _value(self.output_tokens)
        if span is not None and not span.closed and (self.samples or tokens or out or self.flops):
            span.add(samples=self.samples or None, tokens=tokens or None, output_tokens=out or None,
                     flops=self.flops or None)
        self.samples, self.tokens, self.output_tokens, self.flops = 0, 0, 0, 0.0


def _value(v: Any) -> int:
    if isinstance(v, (int, float)):
        return int(v)
    return int(v.item())  # the one host read of a device-side sum


class Budget:
    """An energy (kWh) and/or emissions (gCO2eq) budget; :meth:`check` says whether it was passed
    (once). The outcome is recorded as tags on the stage it guards."""

    def __init__(self, budget_kwh: float | None, budget_g: float | None, on_budget: str):
        for name, v in (("budget_kwh", budget_kwh), ("budget_g", budget_g)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise meter.ConfigError(f"{name}={v!r}: give a positive number, or None for no budget")
        if on_budget not in BUDGET_ACTIONS:
            raise meter.ConfigError(f"on_budget={on_budget!r}: use 'stop' (end training cleanly) or 'warn'")
        self.kwh, self.g, self.action = budget_kwh, budget_g, on_budget
        self.passed: str | None = None  # why, once passed

    @property
    def active(self) -> bool:
        return self.kwh is not None or self.g is not None

    def check(self, energy_j: float | None, emissions_g: float | None, where: str) -> bool:
        """True the first time a figure passes its budget."""
        if self.passed is not None or energy_j is None:
            return False
        if self.kwh is not None and j_to_kwh(energy_j) > self.kwh:
            self.passed = f"energy {j_to_kwh(energy_j):.4g} kWh passed the budget of {self.kwh:g} kWh at {where}"
        elif self.g is not None and emissions_g is not None and emissions_g > self.g:
            self.passed = f"emissions {emissions_g:.4g} gCO2eq passed the budget of {self.g:g} g at {where}"
        else:
            return False
        if self.action == "warn":
            log.warning("meter: %s; training continues (on_budget='warn')", self.passed)
        else:
            log.warning("meter: %s; stopping training (on_budget='stop')", self.passed)
        return True

    def tags(self) -> dict[str, Any]:
        if not self.active:
            return {}
        t: dict[str, Any] = {"budget_action": self.action}
        if self.kwh is not None:
            t["budget_kwh"] = self.kwh
        if self.g is not None:
            t["budget_g"] = self.g
        if self.passed is None:
            t["budget_outcome"] = "within budget"
        else:
            t["budget_outcome"] = ("stopped: " if self.action == "stop" else "exceeded (warned): ") + self.passed
        return t


class Forecast:
    """Whole-run energy from the steps seen so far: done + remaining x (mean energy per step plus
    evaluation per step), with a band of two standard deviations of the sum of the remaining
    steps (spread of per-step energy, and the uncertainty of its mean: Var = n s^2 (1 + n / k))."""

    def __init__(self, min_fraction: float = 0.05, min_steps: int = 3):
        self.min_fraction, self.min_steps = min_fraction, min_steps
        self.k = 0  # steps in the statistics
        self.groups = 0  # readings they came in
        self._mean = 0.0
        self._m2 = 0.0
        self.first: dict[str, float] | None = None
        self.last: dict[str, float] | None = None
        self._warned = False
        self._warm = False

    def step(self, energy_j: float, steps: int = 1) -> None:
        """Training energy per optimizer step (J), evaluation excluded, averaged over the last
        ``steps`` steps (a weighted Welford update: a reading of k steps counts as k steps at
        their mean, and the per-step variance is estimated from the spread of the readings,
        Var(mean of k) = s^2 / k). The first reading carries one-time start-up work (workers,
        caches, kernels' first launch): it counts in the energy done, not in the statistics."""
        if not self._warm:
            self._warm = True
            return
        self.k += steps
        self.groups += 1
        d = energy_j - self._mean
        self._mean += d * steps / self.k
        self._m2 += steps * d * (energy_j - self._mean)

    def update(self, done_j: float, eval_j: float, steps_done: int, steps_total: int | None,
               epoch_done: bool, g_per_kwh: float, pue: float) -> dict[str, float] | None:
        """The forecast now (kWh, gCO2eq), once enough of the run was seen; None before."""
        if not steps_total or steps_done <= 0 or self.groups < 2:
            return None
        if not epoch_done and steps_done < max(self.min_steps, math.ceil(self.min_fraction * steps_total)):
            return None
        n = max(steps_total - steps_done, 0)
        sd = math.sqrt(self._m2 / (self.groups - 1))
        per_step = self._mean + eval_j / steps_done
        total = done_j + n * per_step
        band = 2.0 * sd * math.sqrt(n * (1.0 + n / self.k))
        f = {
            "energy_forecast_kwh": j_to_kwh(total),
            "energy_forecast_low_kwh": j_to_kwh(max(total - band, done_j)),
            "energy_forecast_high_kwh": j_to_kwh(total + band),
            "emissions_forecast_g": j_to_kwh(total) * pue * g_per_kwh,
            "forecast_at_step": steps_done,
            "forecast_steps": steps_total,
        }
        if self.first is None:
            self.first = f
        self.last = f
        return f

    def over_budget(self, budget: Budget) -> None:
        if self.last is None or self._warned or budget.passed is not None:
            return
        if budget.kwh is not None and self.last["energy_forecast_kwh"] > budget.kwh:
            self._warned = True
            log.warning("meter: the run is forecast to use %.4g kWh (band %.4g to %.4g), over its budget of %g kWh",
                        self.last["energy_forecast_kwh"], self.last["energy_forecast_low_kwh"],
                        self.last["energy_forecast_high_kwh"], budget.kwh)
        elif budget.g is not None and self.last["emissions_forecast_g"] > budget.g:
            self._warned = True
            log.warning("meter: the run is forecast to emit %.4g gCO2eq, over its budget of %g g",
                        self.last["emissions_forecast_g"], budget.g)

    def tags(self) -> dict[str, Any]:
        """The first forecast (the one a user could have acted on) for the card."""
        if self.first is None:
            return {}
        return {k: v for k, v in self.first.items() if k != "emissions_forecast_g"}


def figures(m: "meter.Meter", snap, own_j: float | None, counts: dict, prefix: str) -> dict[str, float]:
    """The log keys for a stage so far: energy and emissions (inclusive, as the card's stage energy),
    average power, and J per sample / per 1k tokens / per output token from the stage's own energy
    (nested stages of another kind excluded, as in the card)."""
    if snap.energy_j is None:
        return {}
    own = snap.energy_j if own_j is None else own_j
    kwh = j_to_kwh(snap.energy_j)
    out = {f"{prefix}energy_kwh": kwh, f"{prefix}emissions_g": kwh * m.config.pue * m.intensity().g_per_kwh}
    if snap.avg_power_w is not None:
        out[f"{prefix}power_w"] = snap.avg_power_w
    if counts.get("samples"):
        out[f"{prefix}energy_per_sample_j"] = own / counts["samples"]
    if counts.get("tokens"):
        out[f"{prefix}energy_per_1k_tokens_j"] = own * 1000 / counts["tokens"]
    if counts.get("output_tokens"):
        out[f"{prefix}energy_per_output_token_j"] = own / counts["output_tokens"]
    return out


#: How long the global main process waits, at a log, for the other ranks' figures of that step.
JOB_LOG_WAIT_S = 0.5


def job_wide(m: "meter.Meter", tag: str, snap, own_j: float | None, counts: dict):
    """The figures of a stage so far summed over the job's ranks, for the logs: each rank posts
    its own (energy, own energy, average power, counts) for ``tag`` through the process group's
    store; the global rank 0 adds those that arrive within :data:`JOB_LOG_WAIT_S` (a rank that
    lags contributes its latest post). Returns (snapshot-like, own energy, counts, ranks summed);
    this rank's own figures alone without a process group. Never raises."""
    info = getattr(m, "rank", None)
    if info is None:
        return snap, own_j, counts, 1
    try:
        import json
        import time
        from types import SimpleNamespace

        from meter._exchange import default_store

        store = default_store()
        if store is None:
            return snap, own_j, counts, 1
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        base = f"meter/log/{info.job_id}/{info.launch_id}"
        mine = {"tag": tag, "energy_j": snap.energy_j, "own_j": own_j, "avg_power_w": snap.avg_power_w,
                "counts": {k: v for k, v in (counts or {}).items() if isinstance(v, (int, float))}}
        store.set(f"{base}/{rank}", json.dumps(mine).encode())
        if rank != 0:
            return snap, own_j, counts, 1
        got = {0: mine}
        deadline = time.monotonic() + JOB_LOG_WAIT_S
        while True:
            for r in range(1, world):
                if r in got and got[r].get("tag") == tag:
                    continue
                if store.check([f"{base}/{r}"]):
                    got[r] = json.loads(store.get(f"{base}/{r}"))
            if all(r in got and got[r].get("tag") == tag for r in range(world)) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        total = {"samples": 0, "tokens": 0, "output_tokens": 0, "flops": 0}
        e = own = p = 0.0
        for g in got.values():
            e += g.get("energy_j") or 0.0
            own += g.get("own_j") or 0.0
            p += g.get("avg_power_w") or 0.0
            for k, v in (g.get("counts") or {}).items():
                total[k] = total.get(k, 0) + v
        return SimpleNamespace(energy_j=e, avg_power_w=p), own, {k: v for k, v in total.items() if v}, len(got)
    except Exception:  # noqa: BLE001 - a log figure must never break training
        log.debug("meter: job-wide log figures unavailable; this rank's own are logged", exc_info=True)
        return snap, own_j, counts, 1


def job_run_dirs(m: "meter.Meter") -> list[str] | None:
    """In a multi-rank job (call on every rank): write the job record and return, on the global
    rank 0, the run directories of the ranks that reported (None elsewhere, or for one process).
    Never raises and never waits longer than ``METER_GATHER_TIMEOUT_S``."""
    if getattr(m, "rank", None) is None or not m.run_dir:
        return None
    import json

    from meter.distributed import write_job_record

    path = write_job_record(m)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [r["run_dir"] for r in json.load(f)["ranks"] if r.get("run_dir")] or None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("meter: the job record %s could not be read back; the card covers this rank only", path)
        return None


class CardWriter:
    """Writes the efficiency cards for one run directory: now (end of training) or, for stand-alone
    evaluation and prediction, once later (at :meth:`write`, at the next training end, or at exit),
    so that a loop of ``evaluate()`` calls does not rebuild the cards each time."""

    def __init__(self) -> None:
        self.pending: tuple[str, str] | None = None
        self.paths: list[str] = []
        self._registered = False

    def defer(self, m: "meter.Meter", out_dir: str) -> None:
        if not m.run_dir:
            return
        self.pending = (m, out_dir)
        if not self._registered:
            self._registered = True
            ref = weakref.ref(self)
            atexit.register(lambda: ref() is not None and ref().write(at_exit=True))

    def now(self, m: "meter.Meter", out_dir: str, paths: list[str] | None = None) -> list[str]:
        """Write the cards now: of ``m``'s run, or of ``paths`` (a job's per-rank run directories)."""
        self.pending = None
        m.flush()
        return self._write(paths or m.run_dir, out_dir)

    def write(self, at_exit: bool = False) -> list[str]:
        """Write the deferred cards now (a no-op when none are pending). Returns their paths."""
        if self.pending is None:
            return self.paths
        m, out_dir = self.pending
        self.pending = None
        try:
            m.flush()
            return self._write(m.run_dir, out_dir)
        except Exception:  # noqa: BLE001 - at exit a card problem must not mask the program's outcome
            if not at_exit:
                raise
            log.exception("meter: writing the efficiency cards at exit failed")
            return self.paths

    def _write(self, run_dir, out_dir: str) -> list[str]:
        if not run_dir:
            return self.paths
        from meter.report import cards

        self.paths = cards.write_cards(run_dir, out_dir)
        return self.paths


class Watch:
    """Per optimizer step: the training stage's energy (a snapshot), its per-step energy for the
    forecast, and the budget check. Nested evaluation energy is reported with :meth:`nested`.

    A snapshot costs a counter read and a figure build (~0.3 ms), a lot beside a tiny model's
    step, so it is taken at every step only while it decides something at every step: with a
    budget (the stop comes at the step that passed it), and until the first forecast. After
    that, at most every ``interval_s`` of the Meter's clock, at logging steps (``due``) and at the
    last step; the steps in between count in the next reading."""

    def __init__(self, budget: Budget, forecast_after: float):
        f = forecast_after
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise meter.ConfigError(f"forecast_after={f!r}: give the fraction of training steps after which the "
                                    "whole run is forecast, a number in (0, 1] (default 0.05)")
        self.budget = budget
        self.forecast_after = forecast_after
        self.forecast = Forecast(forecast_after)
        self.nested_j = 0.0
        self.stopped_at: int | None = None
        self._g_per_kwh: float | None = None
        self._last_t = -math.inf

    @property
    def g_per_kwh(self) -> float:
        """The intensity for budgets and forecasts: looked up at first use, not at the start of
        training (where it would be inside the Trainer's first step)."""
        if self._g_per_kwh is None:
            self._g_per_kwh = self.m.intensity().g_per_kwh
        return self._g_per_kwh

    def start(self, m: "meter.Meter", step: int) -> None:
        self.m, self._g_per_kwh = m, None
        self._last_t = -math.inf
        self.start_step = self.last_step = step
        self.nested_j = self.last_own_j = 0.0
        self.stopped_at = None
        self.epoch_done = False
        self.budget.passed = None
        self.forecast = Forecast(self.forecast_after)

    def nested(self, span) -> None:
        """A closed stage of another kind inside the training stage (evaluation, sanity check)."""
        self.nested_j += span.result.energy_j or 0.0

    def step(self, span, step: int, total_steps: float | None, *, due: bool = False) -> bool:
        """After optimizer step ``step`` of ``total_steps``: True when the budget says stop now.
        ``due``: the figures are logged at this step, so read them now."""
        if step == self.last_step:
            return False
        now = self.m.clock.monotonic()
        if not (due or self.budget.active or self.forecast.first is None or step >= (total_steps or math.inf)
                or now - self._last_t >= self.m.config.interval_s):
            return False
        self._last_t = now
        snap = span.snapshot()
        if snap.energy_j is None:
            return False
        own = snap.energy_j - self.nested_j
        self.forecast.step((own - self.last_own_j) / (step - self.last_step), step - self.last_step)
        self.last_own_j, self.last_step = own, step
        total = int(total_steps) - self.start_step if total_steps and total_steps != float("inf") else None
        self.forecast.update(snap.energy_j, self.nested_j, step - self.start_step, total, self.epoch_done,
                             self.g_per_kwh, self.m.config.pue)
        self.forecast.over_budget(self.budget)
        if not self.budget.active:
            return False
        g = j_to_kwh(snap.energy_j) * self.m.config.pue * self.g_per_kwh
        if self.budget.check(snap.energy_j, g, f"step {step}") and self.budget.action == "stop":
            self.stopped_at = step
            return True
        return False

    def tags(self) -> dict[str, Any]:
        t = {**self.budget.tags(), **self.forecast.tags()}
        if self.stopped_at is not None:
            t["stopped_at_step"] = self.stopped_at
        return t

    def log_keys(self) -> dict[str, float]:
        last = self.forecast.last or {}
        return {k: v for k, v in last.items() if not k.startswith("forecast_")}


def check_meter_kwargs(given: "meter.Meter | None", kwargs: dict):
    """The callbacks' ``**meter_kwargs`` are Meter() arguments: checked now, when the callback is
    made (not at the first step), with the argument's name and the fix. Returns the resolved
    configuration of the Meter the callback will make (None with ``meter=``)."""
    from meter import config as config_mod
    from meter.core import _ARG_NAMES

    for k in kwargs:
        if k not in _ARG_NAMES:
            raise meter.ConfigError(f"unknown argument {k!r}{config_mod.suggest(k, _ARG_NAMES)} (arguments other than "
                                    "the callback's own are passed to meter.Meter)")
    if given is not None and kwargs:
        raise meter.ConfigError(f"meter= was given, so {', '.join(sorted(kwargs))} would be ignored; configure that "
                                "Meter instead, or drop meter=")
    if given is not None:
        return None
    return config_mod.resolve({k: kwargs.get(k) for k in config_mod.DEFAULTS}, kwargs.get("environ"), kwargs.get("pyproject"))


def warm_up(cfg, kwargs: dict) -> None:
    """Start the warm-up of the Meter a callback will make (imports, the CPU table, the host,
    nvmlInit: ~0.1-0.3 s) when the callback is made: the Meter itself comes at the end of
    ``Trainer.__init__``, and its warm-up would then compete with ``on_train_begin``."""
    if cfg is not None and kwargs.get("sensors") is None:
        from meter.core import _prefetch

        _prefetch(cfg.gpus != (), init_nvml=kwargs.get("nvml") is None)
