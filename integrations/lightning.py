"""``MeterCallback`` for PyTorch Lightning: spans per stage, counts from batches, logged metrics.

    from meter.integrations.lightning import MeterCallback
    trainer = lightning.pytorch.Trainer(..., callbacks=[MeterCallback(region="FR")])

Spans: ``fit/epoch-N`` (validation during fit nests under its epoch as ``validate``),
``validate``, ``test`` and ``predict`` for the stand-alone loops. Samples and tokens come from the
batches each loop sees (see :func:`meter.integrations.torch.batch_counts`). Only the process with
``local_rank == 0`` measures (one Meter per node). Metrics ``energy_kwh``, ``emissions_g`` and
``power_w`` are logged through ``pl_module.log`` at the end of each training and validation epoch.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl

import meter
from meter.integrations.torch import batch_counts
from meter.units import j_to_kwh


class MeterCallback(pl.Callback):
    """Measures a Lightning run per stage; ``meter=`` or ``Meter`` keyword arguments."""

    def __init__(self, meter: "meter.Meter | None" = None, *, log_metrics: bool = True, **meter_kwargs: Any):
        self._meter = meter
        self._meter_kwargs = meter_kwargs
        self.log_metrics = log_metrics
        self._stack: list[tuple[Any, Any]] = []
        self._spans: dict[str, Any] = {}

    @property
    def meter(self) -> "meter.Meter | None":
        return self._meter

    def _on(self, trainer) -> bool:
        if trainer.local_rank != 0:
            return False
        if self._meter is None:
            kw = dict(self._meter_kwargs)
            kw.setdefault("output_dir", os.path.join(trainer.default_root_dir or ".", "meter"))
            kw.setdefault("run_name", "lightning")
            self._meter = meter.Meter(**kw)
        return True

    def _open(self, key: str, name: str) -> None:
        track = self._meter.track(name)
        self._spans[key] = track.__enter__()
        self._stack.append((track, self._spans[key]))

    def _close(self, key: str) -> None:
        span = self._spans.pop(key, None)
        while span is not None and self._stack:
            track, s = self._stack.pop()
            track.__exit__(None, None, None)
            if s is span:
                break

    def _count(self, key: str, batch) -> None:
        samples, tokens = batch_counts(batch)
        for k in (key, "fit") if key == "epoch" else (key,):
            span = self._spans.get(k)
            if span is not None:
                span.add(samples=samples, tokens=tokens)

    def _log(self, pl_module, key: str, prefix: str) -> None:
        span = self._spans.get(key)
        if not self.log_metrics or span is None:
            return
        snap = span.snapshot()
        if snap.energy_j is None:
            return
        kwh = j_to_kwh(snap.energy_j)
        pl_module.log(f"{prefix}energy_kwh", kwh, rank_zero_only=True)
        pl_module.log(f"{prefix}emissions_g", kwh * self._meter.config.pue * self._meter.intensity().g_per_kwh, rank_zero_only=True)
        if snap.avg_power_w is not None:
            pl_module.log(f"{prefix}power_w", snap.avg_power_w, rank_zero_only=True)

    # fit ----------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        if self._on(trainer):
            self._open("fit", "fit")

    def on_train_epoch_start(self, trainer, pl_module):
        if self._on(trainer):
            self._open("epoch", f"epoch-{trainer.current_epoch + 1}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.local_rank == 0:
            self._count("epoch", batch)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._log(pl_module, "epoch", "")
            self._close("epoch")

    def on_fit_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._close("fit")
            self._meter.flush()

    # validation, test, predict ------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        if self._on(trainer):
            self._open("validate", "validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.local_rank == 0:
            self._count("validate", batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._log(pl_module, "validate", "val_")

    def on_validation_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._close("validate")

    def on_test_start(self, trainer, pl_module):
        if self._on(trainer):
            self._open("test", "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.local_rank == 0:
            self._count("test", batch)

    def on_test_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._close("test")
            self._meter.flush()

    def on_predict_start(self, trainer, pl_module):
        if self._on(trainer):
            self._open("predict", "predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.local_rank == 0:
            self._count("predict", batch)

    def on_predict_end(self, trainer, pl_module):
        if trainer.local_rank == 0:
            self._close("predict")
            self._meter.flush()
