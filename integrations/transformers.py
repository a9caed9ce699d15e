"""``MeterCallback`` for the Hugging Face ``Trainer``: spans per stage, counts, logs, card.

    from meter.integrations.transformers import MeterCallback
    trainer = Trainer(..., callbacks=[MeterCallback(region="FR")])

Span tree (paths): ``train``, ``train/epoch-1``, ``train/epoch-1/evaluate`` (an evaluation during
training nests under its epoch, so exclusive figures keep it out of the epoch's training energy),
and ``evaluate`` or ``predict`` when called on their own (under whatever span is open then).
Samples and tokens are counted from the batches the model actually sees (a forward pre-hook:
``attention_mask.sum()`` where present, else the ``input_ids`` size), so gradient accumulation
and padding are handled. FLOPs come from the Trainer's ``state.total_flos``.

Only the local main process measures (one Meter per node: the node's visible GPUs and its host
sensors, never counted twice); other processes do nothing. Uses meter's public API only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from transformers import TrainerCallback

import meter
from meter.units import j_to_kwh


def _batch_counts(args: tuple, kwargs: dict) -> tuple[int | None, int | None]:
    ids = kwargs.get("input_ids")
    mask = kwargs.get("attention_mask")
    if ids is None and args:
        ids = args[0] if hasattr(args[0], "shape") else None
    if ids is None:
        for v in kwargs.values():  # pixel_values, input_features, ...: samples only
            if hasattr(v, "shape") and len(v.shape) > 0:
                return int(v.shape[0]), None
        return None, None
    samples = int(ids.shape[0]) if len(ids.shape) > 0 else 1
    if mask is not None:
        tokens = int(mask.sum())
    else:
        tokens = int(ids.numel())
    return samples, tokens


class MeterCallback(TrainerCallback):
    """Measures a ``Trainer`` run per stage. Pass a ``meter.Meter`` as ``meter=``, or ``Meter``
    arguments (``region=``, ``pue=``, ...); by default the run log goes to
    ``<output_dir>/meter`` and the efficiency card to ``<output_dir>``.

    ``log_metrics`` adds ``energy_kwh``, ``emissions_g``, ``energy_per_sample_j`` and
    ``power_w`` (prefixed ``eval_`` during evaluation) to the Trainer's logs, so every reporter
    (TensorBoard, W&B, MLflow) and ``state.log_history`` show them.
    """

    def __init__(self, meter: "meter.Meter | None" = None, *, write_card: bool = True, log_metrics: bool = True,
                 **meter_kwargs: Any):
        self._meter = meter
        self._own_meter = meter is None
        self._meter_kwargs = meter_kwargs
        self.write_card = write_card
        self.log_metrics = log_metrics
        self._active = None  # decided on the first event: only the local main process measures
        self._stack: list[tuple[Any, Any]] = []  # (Track, Span), innermost last
        self._train = None
        self._epoch = None
        self._eval = None
        self._hook = None
        self._flos_mark = 0.0
        self._model = None
        self.card_paths: list[str] = []

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def meter(self) -> "meter.Meter | None":
        return self._meter

    def _setup(self, args, state, kwargs) -> bool:
        if self._active is None:
            self._active = bool(state.is_local_process_zero)
            if self._active:
                self._move_first()
                if self._meter is None:
                    kw = dict(self._meter_kwargs)
                    kw.setdefault("output_dir", os.path.join(args.output_dir or ".", "meter"))
                    kw.setdefault("run_name", getattr(args, "run_name", None) or "trainer")
                    self._meter = meter.Meter(**kw)
        if self._active:
            model = kwargs.get("model")
            if model is not None and model is not self._model and hasattr(model, "register_forward_pre_hook"):
                if self._hook is not None:
                    self._hook.remove()
                self._hook = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
                self._model = model
        return bool(self._active)

    def _move_first(self) -> None:
        # Reporters (TensorBoard, W&B, ...) run in callback order; to see our log keys we must run
        # before them. The caller of this event is the Trainer's CallbackHandler.
        frame = sys._getframe(2)
        for _ in range(4):
            handler = frame.f_locals.get("self") if frame is not None else None
            cbs = getattr(handler, "callbacks", None)
            if isinstance(cbs, list) and self in cbs:
                cbs.remove(self)
                cbs.insert(0, self)
                return
            frame = frame.f_back if frame is not None else None

    def _open(self, name: str, **tags: Any):
        track = self._meter.track(name, tags=tags or None)
        span = track.__enter__()
        self._stack.append((track, span))
        return span

    def _close(self, span) -> None:
        if span is None or span.closed:  # already closed with an enclosing stage
            return
        # Close anything opened inside it first, innermost first (the ContextVar needs LIFO).
        while self._stack:
            track, s = self._stack.pop()
            track.__exit__(None, None, None)
            if s is span:
                return

    def _on_forward(self, module, args, kwargs):
        if not module.training and self._eval is None:
            self._eval = self._open("evaluate")
        samples, tokens = _batch_counts(args, kwargs)
        # Evaluation batches count for the evaluation only; training batches for the epoch and
        # the whole training, so "train" samples are dataset size x epochs.
        targets = (self._eval,) if self._eval is not None else (self._epoch, self._train)
        for span in targets:
            if span is not None and not span.closed:
                span.add(samples=samples, tokens=tokens)
        return None

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if not self._setup(args, state, kwargs):
            return
        self._train = self._open("train", epochs=args.num_train_epochs, batch_size=args.per_device_train_batch_size,
                                 gradient_accumulation_steps=args.gradient_accumulation_steps)
        self._flos_mark = state.total_flos or 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self._setup(args, state, kwargs):
            return
        self._close(self._epoch)
        self._epoch = self._open(f"epoch-{int(round(state.epoch or 0)) + 1}")
        self._flos_mark = state.total_flos or 0.0

    def _end_epoch(self, state) -> None:
        if self._epoch is not None and not self._epoch.closed:
            flos = (state.total_flos or 0.0) - self._flos_mark
            if flos > 0:
                self._epoch.add(flops=flos)
            self._close(self._epoch)
        self._epoch = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._end_eval(args, None)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._end_eval(args, "predict")

    def _end_eval(self, args, rename: str | None) -> None:
        if not self._active or self._eval is None:
            return
        if rename:
            self._eval.rename(rename)
        self._close(self._eval)
        self._eval = None
        if self._train is None:  # evaluate() or predict() on their own: the card is final now
            self._finish(args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._active or not self.log_metrics or logs is None:
            return
        evaluating = self._eval is not None and any(k.startswith(("eval_", "test_")) for k in logs)
        span = self._eval if evaluating else self._train
        if span is None:
            return
        snap = span.snapshot()
        if snap.energy_j is None:
            return
        prefix = "eval_" if evaluating else ""
        inten = self._meter.intensity()
        pue = self._meter.config.pue
        values = {
            f"{prefix}energy_kwh": j_to_kwh(snap.energy_j),
            f"{prefix}emissions_g": j_to_kwh(snap.energy_j) * pue * inten.g_per_kwh,
            f"{prefix}power_w": snap.avg_power_w,
        }
        samples = snap.counts.get("samples")
        if samples:
            values[f"{prefix}energy_per_sample_j"] = snap.energy_j / samples
        values = {k: v for k, v in values.items() if v is not None}
        logs.update(values)
        # Trainer.log appended a copy of these logs to log_history just before this event.
        if state.log_history and all(state.log_history[-1].get(k) == v for k, v in logs.items() if k not in values):
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        self._end_epoch(state)
        if self._train is not None and not self._train.closed:
            flos = (state.total_flos or 0.0)
            if flos > 0:
                self._train.add(flops=flos)
            self._close(self._train)
        self._train = None
        self._finish(args)

    def _finish(self, args) -> None:
        self._meter.flush()
        if self.write_card and self._meter.run_dir:
            self._write_card(args, self._meter.run_dir)

    def _write_card(self, args, run_dir: str) -> None:
        try:
            from meter.report import cards
        except ImportError:  # the card renderer is optional until it lands
            return
        self.card_paths = cards.write_cards(run_dir, args.output_dir)

    def on_epoch_end(self, args, state, control, **kwargs):
        # The epoch stays open through the evaluation that follows it; it closes at the next
        # epoch's start or at the end of training.
        return
