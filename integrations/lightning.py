"""``MeterCallback`` for PyTorch Lightning: a span per stage, counts, cumulative logs, budget, forecast, card.

    from meter.integrations.lightning import MeterCallback
    trainer = lightning.pytorch.Trainer(..., callbacks=[MeterCallback(region="FR", budget_kwh=2.0)])

Spans: ``fit``, ``fit/sanity-check`` (Lightning's validation sanity check, labelled as evaluation),
``fit/epoch-N`` (N from ``trainer.current_epoch``, so a resumed fit goes on where it stopped),
``fit/epoch-N/validate``, and ``validate``, ``test``, ``predict`` for the stand-alone loops.
Samples and tokens come from the batches each loop sees (see :func:`meter.integrations.torch.lazy_counts`),
kept on the device until a log or a stage's end. An exception (``on_exception``) closes the open
spans with its type; the next ``fit`` starts a clean tree.

Logged through ``pl_module.log``: ``energy_kwh``, ``emissions_g``, ``power_w``,
``energy_per_sample_j`` cumulative over ``fit`` at each training epoch's end (J per sample without
nested validation, as in the card), ``energy_forecast_kwh`` (with ``_low_``/``_high_`` band) and
``emissions_forecast_g`` once known, ``val_…`` and ``test_…`` for those loops. Prediction cannot
log; its figures are in ``callback.metrics["predict"]``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ._common import Budget, CardWriter, Tally, Watch, check_meter_kwargs, figures, job_run_dirs, job_wide, log, missing

try:
    import lightning.pytorch as pl
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without lightning
    raise missing(None, "lightning", "meter.integrations.lightning", _exc) from _exc

import meter
from meter.integrations.torch import lazy_counts


class MeterCallback(pl.Callback):
    """Measures a Lightning run per stage; ``meter=`` or ``Meter`` keyword arguments. The run log
    goes to ``<default_root_dir>/meter-runs``, the efficiency cards to ``default_root_dir`` at the
    end of ``fit`` (after stand-alone validate/test/predict: once, at :meth:`write_cards` or exit).
    ``budget_kwh``, ``budget_g``, ``on_budget`` and ``forecast_after`` as for the Trainer callback;
    a budget stop sets ``trainer.should_stop`` (Lightning ends the epoch and its checkpoint
    callbacks save as at any stop)."""

    def __init__(self, meter: "meter.Meter | None" = None, *, log_metrics: bool = True, write_card: bool = True,
                 budget_kwh: float | None = None, budget_g: float | None = None, on_budget: str = "stop",
                 forecast_after: float = 0.05, **meter_kwargs: Any):
        self._meter = meter
        from ._common import warm_up

        warm_up(check_meter_kwargs(meter, meter_kwargs), meter_kwargs)
        self._meter_kwargs = meter_kwargs
        self.log_metrics = log_metrics
        self.write_card = write_card
        self.budget = Budget(budget_kwh, budget_g, on_budget)
        self.watch = Watch(self.budget, forecast_after)
        self.cards = CardWriter()
        self.metrics: dict[str, dict[str, float]] = {}
        self._stack: list[tuple[Any, Any]] = []
        self._spans: dict[str, Any] = {}
        self._log_seq: dict[str, int] = {}  # logs per stage so far (the job-wide figures' tag)
        self._tallies: dict[int, Tally] = {}

    @property
    def meter(self) -> "meter.Meter | None":
        return self._meter

    @property
    def card_paths(self) -> list[str]:
        return self.cards.paths

    def write_cards(self) -> list[str]:
        """Write cards left pending by stand-alone validate/test/predict now."""
        return self.cards.write()

    # -- plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _measures(trainer) -> bool:
        """Which processes measure: every rank, each the devices it owns (see ``meter.distributed``);
        the cards are written once, by the global rank 0, from the whole job's run logs."""
        return True

    def _on(self, trainer) -> bool:
        if not self._measures(trainer):
            return False
        if self._meter is None:
            kw = dict(self._meter_kwargs)
            kw.setdefault("output_dir", os.path.join(trainer.default_root_dir or ".", "meter-runs"))
            kw.setdefault("run_name", "lightning")
            self._meter = meter.Meter(**kw)
        return True

    def _open(self, key: str, name: str, **tags: Any) -> Any:
        track = self._meter.track(name, tags={k: v for k, v in tags.items() if v is not None} or None)
        span = track.__enter__()
        self._spans[key] = span
        self._stack.append((track, span))
        self._tallies[span.span_id] = Tally()
        return span

    def _close(self, key: str, exc: BaseException | None = None) -> Any:
        span = self._spans.get(key)
        while span is not None and self._stack:
            track, s = self._stack.pop()
            for k in [k for k, v in self._spans.items() if v is s]:
                del self._spans[k]
            tally = self._tallies.pop(s.span_id, None)
            if tally is not None:
                tally.flush(s)
            track.__exit__(*((type(exc), exc, exc.__traceback__) if exc is not None else (None, None, None)))
            if s is span:
                break
        return span

    def _abandon(self, exc: BaseException | None = None) -> None:
        if not self._stack:
            return
        exc = exc or getattr(sys, "last_value", None) or RuntimeError("an earlier Lightning loop did not finish")
        log.warning("meter: %s ended by %s; its spans are closed as interrupted", self._stack[0][1].path, type(exc).__name__)
        for _, s in self._stack:
            s.tags["interrupted"] = True
        self._close(next(k for k, v in self._spans.items() if v is self._stack[0][1]), exc)
        self._spans.clear()

    def _count(self, keys: tuple[str, ...], batch) -> None:
        samples, tokens = lazy_counts(batch)
        for k in keys:
            span = self._spans.get(k)
            if span is not None:
                self._tallies[span.span_id].add(samples, tokens)

    def _figures(self, key: str, prefix: str, nested_j: float = 0.0) -> dict[str, float]:
        span = self._spans.get(key)
        if span is None:
            return {}
        self._tallies[span.span_id].flush(span)
        snap = span.snapshot()
        own = None if snap.energy_j is None else snap.energy_j - nested_j
        if snap.energy_j is None:
            return {}
        # every rank logs at the same points, in the same order: the n-th log of a stage is one tag
        self._log_seq[key] = self._log_seq.get(key, 0) + 1
        snap, own, counts, n = job_wide(self._meter, f"{key}-{self._log_seq[key]}", snap, own, snap.counts)
        values = figures(self._meter, snap, own, counts, prefix)
        if n > 1:
            values[f"{prefix}meter_ranks"] = n
        return values

    def _log(self, pl_module, values: dict[str, float]) -> None:
        if not self.log_metrics:
            return
        for k, v in values.items():
            pl_module.log(k, float(v), rank_zero_only=True, on_step=False, on_epoch=True)

    def _finish(self, trainer, stage: str) -> None:
        paths = job_run_dirs(self._meter) if stage == "fit" else None  # every rank posts its totals
        if not (self.write_card and trainer.is_global_zero):
            self._meter.flush()
        elif stage == "fit":
            self.cards.now(self._meter, trainer.default_root_dir, paths)
        else:
            self.cards.defer(self._meter, trainer.default_root_dir)

    # -- fit -----------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        if not self._on(trainer):
            return
        self._abandon()
        self.watch.start(self._meter, trainer.global_step)
        self._open("fit", "fit", kind="train", max_epochs=trainer.max_epochs, resumed_from_step=trainer.global_step or None)

    def on_sanity_check_start(self, trainer, pl_module):
        if self._on(trainer) and "fit" in self._spans:
            self._open("sanity", "sanity-check", kind="evaluate", sanity_check=True)

    def on_sanity_check_end(self, trainer, pl_module):
        if self._measures(trainer) and "sanity" in self._spans:
            self.watch.nested(self._close("sanity"))

    def on_train_epoch_start(self, trainer, pl_module):
        if self._on(trainer) and "fit" in self._spans:
            self._close("epoch")
            n = trainer.current_epoch + 1
            self._open("epoch", f"epoch-{n}", epoch=n)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._measures(trainer) or "fit" not in self._spans:
            return
        self._count(("epoch", "fit"), batch)
        if (self.budget.active or self.log_metrics) and self.watch.step(
                self._spans["fit"], trainer.global_step, trainer.estimated_stepping_batches):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._measures(trainer) or "fit" not in self._spans:
            return
        self.watch.epoch_done = True
        values = self._figures("fit", "", self.watch.nested_j)
        values.update(self.watch.log_keys())
        self._log(pl_module, values)
        self.metrics["fit"] = values

    def on_fit_end(self, trainer, pl_module):
        if not self._measures(trainer) or "fit" not in self._spans:
            return
        self._close("epoch")
        fit = self._spans["fit"]
        fit.tags.update(self.watch.tags())
        self._close("fit")
        self._finish(trainer, "fit")

    def on_exception(self, trainer, pl_module, exception):
        if self._measures(trainer):
            self._abandon(exception)

    # -- validation, test, predict -------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        if self._on(trainer) and not trainer.sanity_checking:
            if "fit" not in self._spans:
                self._abandon()
            self._open("validate", "validate", kind="evaluate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._measures(trainer):
            self._count(("sanity",) if trainer.sanity_checking else ("validate",), batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        if self._measures(trainer) and not trainer.sanity_checking and "validate" in self._spans:
            values = self._figures("validate", "val_")
            self._log(pl_module, values)
            self.metrics["validate"] = values

    def on_validation_end(self, trainer, pl_module):
        if self._measures(trainer) and not trainer.sanity_checking and "validate" in self._spans:
            span = self._close("validate")
            if "fit" in self._spans:
                self.watch.nested(span)
            else:
                self._finish(trainer, "validate")

    def on_test_start(self, trainer, pl_module):
        if self._on(trainer):
            self._abandon()
            self._open("test", "test", kind="evaluate")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._measures(trainer):
            self._count(("test",), batch)

    def on_test_epoch_end(self, trainer, pl_module):
        if self._measures(trainer) and "test" in self._spans:
            values = self._figures("test", "test_")
            self._log(pl_module, values)
            self.metrics["test"] = values

    def on_test_end(self, trainer, pl_module):
        if self._measures(trainer) and "test" in self._spans:
            self._close("test")
            self._finish(trainer, "test")

    def on_predict_start(self, trainer, pl_module):
        if self._on(trainer):
            self._abandon()
            self._open("predict", "predict", kind="predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._measures(trainer):
            self._count(("predict",), batch)

    def on_predict_end(self, trainer, pl_module):
        if self._measures(trainer) and "predict" in self._spans:
            self.metrics["predict"] = self._figures("predict", "predict_")
            self._close("predict")
            self._finish(trainer, "predict")
