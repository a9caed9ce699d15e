"""``MeterCallback`` for the Hugging Face ``Trainer``: a span per stage, counts, logs, budget, forecast, card.

    from meter.integrations.transformers import MeterCallback
    trainer = Trainer(..., callbacks=[MeterCallback(region="FR", budget_kwh=2.0)])

Span tree: ``train``, ``train/epoch-N`` (N from the Trainer's epoch, so a resumed run goes on where
it stopped), ``train/epoch-N/evaluate`` (evaluation during training nests under its epoch, so the
card keeps it out of training energy), ``evaluate`` and ``predict`` for calls on their own.

Stages follow the Trainer's own events and state: a training step runs from ``on_step_begin`` to
``on_pre_optimizer_step``; an evaluation opens at the first forward pass (or ``generate`` call) made
while the Trainer iterates an evaluation dataloader and closes at ``on_evaluate`` / ``on_predict``.
Forward passes anywhere else (a user callback generating samples, a manual call in a notebook) are
not counted. Counts stay on the device until a log or the end of a stage (no sync per step).

One Meter per rank (see :meth:`MeterCallback._measures`). Public meter API only.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import weakref
from typing import Any

from ._common import Budget, CardWriter, Tally, Watch, check_meter_kwargs, figures, job_run_dirs, job_wide, log, missing
from ._hf import MID_STEP, generated_tokens, input_counts, metric_prefix, wrap_generate

try:
    from transformers import TrainerCallback
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without transformers
    raise missing("hf", "transformers", "meter.integrations.transformers", _exc) from _exc

import meter


class TrainingInterrupted(Exception):
    """Stands for the exception that ended an earlier ``train()`` when it is not visible to a
    callback (a Trainer has no exception event); in notebooks ``sys.last_value`` gives the real one."""


class MeterCallback(TrainerCallback):
    """Measures a ``Trainer`` run per stage.

    Pass a ``meter.Meter`` as ``meter=``, or ``Meter`` arguments (``region=``, ``pue=``, ...); by
    default the run log goes to ``<output_dir>/meter-runs`` and the efficiency cards to
    ``<output_dir>`` at the end of training (after stand-alone ``evaluate()`` / ``predict()``: once,
    at :meth:`write_cards` or at exit).

    ``budget_kwh`` / ``budget_g``: when the energy (kWh) or emissions (gCO2eq) of ``train`` pass
    it, ``on_budget="stop"`` ends training cleanly (checkpoint saved as at the Trainer's own stop,
    unless ``save_strategy="no"``), ``"warn"`` warns once. The outcome is in the card.

    Logs (``state.log_history`` and every reporter after this callback, see :meth:`attach`):
    ``energy_kwh``, ``emissions_g``, ``power_w``, ``energy_per_sample_j``,
    ``energy_per_1k_tokens_j``, cumulative over ``train`` (J per sample and token exclude nested
    evaluation, as in the card), ``energy_forecast_kwh`` with ``_low_``/``_high_`` band and
    ``emissions_forecast_g`` once ``forecast_after`` of the steps (or an epoch) ran; the same
    with the Trainer's metric prefix for evaluation (``eval_…``) and prediction (``test_…``,
    plus ``test_energy_per_output_token_j`` when generating), also in the returned metrics.
    """

    def __init__(self, meter: "meter.Meter | None" = None, *, write_card: bool = True, log_metrics: bool = True,
                 budget_kwh: float | None = None, budget_g: float | None = None, on_budget: str = "stop",
                 forecast_after: float = 0.05, **meter_kwargs: Any):
        self._meter = meter
        from ._common import warm_up

        warm_up(check_meter_kwargs(meter, meter_kwargs), meter_kwargs)
        self._meter_kwargs = meter_kwargs
        self.write_card = write_card
        self.log_metrics = log_metrics
        self.budget = Budget(budget_kwh, budget_g, on_budget)
        self.watch = Watch(self.budget, forecast_after)
        self.cards = CardWriter()
        self._active: bool | None = None
        self._stack: list[tuple[Any, Any]] = []  # (Track, Span), innermost last
        self._train = self._epoch = self._eval = None
        self._tallies: dict[int, Tally] = {}
        self._model = None
        self._hook = None
        self._generate = None  # (model, wrapper) while generate() is wrapped
        self._n_params = 0
        self._main_input = "input_ids"
        self._in_step = False
        self._group: tuple | None = None  # counts of the current prediction step's inputs
        self._train_loaders: "weakref.WeakSet" = weakref.WeakSet()
        self._gradient_state = None
        self._seen_exc = getattr(sys, "last_value", None)
        self._warned_late = False
        self._epochs = 0
        self._last = ""  # the last Trainer event seen
        self._eval_loader = lambda: None

    # -- public helpers ------------------------------------------------------------------------
    @property
    def meter(self) -> "meter.Meter | None":
        return self._meter

    @property
    def card_paths(self) -> list[str]:
        return self.cards.paths

    def write_cards(self) -> list[str]:
        """Write cards left pending by stand-alone ``evaluate()``/``predict()`` calls now."""
        return self.cards.write()

    def attach(self, trainer) -> "MeterCallback":
        """Add this callback to ``trainer`` right after the Trainer's flow callback, ahead of its
        reporters (TensorBoard, W&B, MLflow, ...) and every other callback, so that they all see
        meter's log keys. Uses only ``Trainer.add_callback`` and ``pop_callback``."""
        from transformers.trainer_callback import DefaultFlowCallback

        others = [cb for cb in trainer.callback_handler.callbacks if cb is not self and not isinstance(cb, DefaultFlowCallback)]
        if self in trainer.callback_handler.callbacks:
            trainer.pop_callback(self)
        for cb in others:
            trainer.pop_callback(cb)
        trainer.add_callback(self)
        for cb in others:
            trainer.add_callback(cb)
        self._setup(trainer.args, trainer.state, {"model": trainer.model})
        return self

    # -- plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _measures(state) -> bool:
        """Which processes measure: every rank. Each measures the devices it owns (decided with
        the other ranks by GPU UUID and node, see ``meter.distributed``); the cards are written
        once, by the global main process, from the whole job's run logs."""
        return True

    def _setup(self, args, state, kwargs) -> bool:
        if self._active is None:
            self._active = self._measures(state)
            if self._active and self._meter is None:
                kw = dict(self._meter_kwargs)
                kw.setdefault("output_dir", os.path.join(args.output_dir or ".", "meter-runs"))
                kw.setdefault("run_name", getattr(args, "run_name", None) or "trainer")
                self._meter = meter.Meter(**kw)
        if self._active:
            model = kwargs.get("model")
            if model is not None and model is not self._model and hasattr(model, "register_forward_pre_hook"):
                self._unhook()
                self._hook = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
                self._model = model
                self._main_input = getattr(model, "main_input_name", "input_ids")
                count = getattr(model, "num_parameters", None)
                self._n_params = count(exclude_embeddings=True) if callable(count) else 0
                if callable(getattr(model, "generate", None)):
                    wrapper = wrap_generate(model, self._before_generate, functools.partial(self._count_generation, model))
                    self._generate = (model, wrapper)
        return bool(self._active)

    def _unhook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._generate is not None:
            model, wrapper = self._generate
            if model.__dict__.get("generate") is wrapper:
                del model.generate
            self._generate = None

    def _open(self, name: str, **tags: Any):
        track = self._meter.track(name, tags={k: v for k, v in tags.items() if v is not None} or None)
        span = track.__enter__()
        self._stack.append((track, span))
        self._tallies[span.span_id] = Tally()
        return span

    def _close(self, span, exc: BaseException | None = None) -> None:
        if span is None or span.closed:
            return
        while self._stack:  # innermost first: the ContextVar needs LIFO
            track, s = self._stack.pop()
            tally = self._tallies.pop(s.span_id, None)
            if tally is not None:
                tally.flush(s)
            if exc is None:
                track.__exit__(None, None, None)
            else:
                track.__exit__(type(exc), exc, exc.__traceback__)
            if s is span:
                return

    def _abandon(self) -> None:
        """Close what an interrupted earlier call left open, as ended by an exception."""
        if not self._stack:
            return
        exc = getattr(sys, "last_value", None)
        if exc is None or exc is self._seen_exc:
            exc = TrainingInterrupted("an earlier train(), evaluate() or predict() did not finish")
        log.warning("meter: %s did not finish (%s); its spans are closed as interrupted and a new tree starts",
                    self._stack[0][1].path, type(exc).__name__)
        for _, s in self._stack:
            s.tags["interrupted"] = True
        self._close(self._stack[0][1], exc)
        self._train = self._epoch = self._eval = None
        self._in_step = False
        self._group = None

    # -- counting ------------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        if self._generate is not None and self._generate[1].meter_depth[0]:
            return None  # decoding steps inside generate(): its wrapper counts the inputs once
        if self._in_step:
            samples, tokens, ids = input_counts(args, kwargs, self._main_input)
            flops = 6.0 * ids.numel() * self._n_params if ids is not None and self._n_params else None
            for span in (self._epoch, self._train):
                if span is not None:
                    self._tallies[span.span_id].add(samples, tokens, flops=flops)
            active = self._active_loader()
            if active is not None:
                self._train_loaders.add(active)
            return None
        self._outside_forward()
        if self._group is None:
            samples, tokens, _ = input_counts(args, kwargs, self._main_input)
            self._group = (samples, tokens, None)
        return None

    def _active_loader(self):
        if self._gradient_state is None:
            try:
                from accelerate.state import GradientState
            except ImportError:
                return None
            self._gradient_state = GradientState()
        return self._gradient_state.active_dataloader

    def _outside_forward(self) -> None:
        """A forward (or generate) outside a training step: the first of an evaluation loop opens
        its span; any other is left uncounted (its group is dropped at the next event)."""
        active = self._active_loader()
        if self._eval is not None:
            if active is None or self._eval_loader() is active:
                return
            self._abandon()  # a new evaluation loop while an earlier one never ended: it was interrupted
        if active is None or active in self._train_loaders:
            return
        self._open_eval(active)

    def _open_eval(self, loader=None) -> None:
        if self._train is None or self._last in MID_STEP:
            self._abandon()  # leftovers of an interrupted call, not a training that is running
        self._eval = self._open("evaluate", kind="evaluate")
        self._eval_loader = weakref.ref(loader) if loader is not None else (lambda: None)
        self._group = None

    def _before_generate(self) -> bool:
        if self._in_step:
            return False
        self._outside_forward()
        return True

    def _count_generation(self, model, args, kwargs, out) -> None:
        samples, tokens, ids = input_counts(args, kwargs, "input_ids")
        generated = generated_tokens(model, kwargs, ids, out)
        if self._group is None:
            self._group = (samples, tokens, generated)
        elif generated is not None:
            s, t, g = self._group
            self._group = (s, t, generated if g is None else g + generated)

    def _drop_group(self) -> None:
        self._group = None

    # -- training events -----------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        self._setup(args, state, kwargs)

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._setup(args, state, kwargs):
            return
        self._abandon()
        self._last = "train_begin"
        self._seen_exc = getattr(sys, "last_value", None)
        self.watch.start(self._meter, state.global_step)
        self._epochs = 0
        self._train_loaders = weakref.WeakSet()
        self._train = self._open(
            "train", kind="train", epochs=args.num_train_epochs, max_steps=state.max_steps,
            batch_size=args.per_device_train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
            resumed_from_step=state.global_step or None,
        )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._last = "epoch_begin"
        if not self._setup(args, state, kwargs) or self._train is None:
            return
        self._drop_group()
        self._close(self._epoch)
        number = math.floor((state.epoch or 0.0) + 1e-6) + 1  # 0.8 after a mid-epoch resume is epoch 1
        first = self._epochs == 0
        self._epochs += 1
        self._epoch = self._open(f"epoch-{number}", epoch=number,
                                 resumed_at_step=state.global_step if first and state.global_step else None)

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = "step_begin"
        if self._active and self._train is not None:
            self._drop_group()
            self._in_step = True

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._last = "pre_optimizer_step"
        self._in_step = False

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._last = "optimizer_step"
        self._in_step = False

    def on_step_end(self, args, state, control, **kwargs):
        self._last = "step_end"
        self._in_step = False
        if not self._active or self._train is None:
            return
        self._drop_group()
        if (self.budget.active or self.log_metrics) and self.watch.step(self._train, state.global_step, state.max_steps,
                                                                        due=bool(control.should_log)):
            control.should_training_stop = True
            control.should_log = True
            if str(getattr(args.save_strategy, "value", args.save_strategy)) != "no":
                control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        # The epoch stays open through the evaluation that follows; it closes at the next epoch's
        # start or at the end of training. After a budget stop nothing more runs.
        self._last = "epoch_end"
        self._drop_group()
        self.watch.epoch_done = True
        if self.watch.stopped_at is not None and self.watch.stopped_at == state.global_step:
            control.should_evaluate = False
            control.should_save = False

    def on_substep_end(self, args, state, control, **kwargs):
        self._last = "substep_end"

    def on_train_end(self, args, state, control, **kwargs):
        if not self._active or self._train is None:
            return
        self._drop_group()
        self._close(self._epoch)
        self._epoch = None
        self._train.tags.update(self.watch.tags())
        self._close(self._train)
        self._train = None
        paths = job_run_dirs(self._meter)  # every rank posts its totals; rank 0 gets the job's runs
        if self.write_card and state.is_world_process_zero:
            self.cards.now(self._meter, args.output_dir, paths)
        else:
            self._meter.flush()

    # -- evaluation and prediction -------------------------------------------------------------
    def on_prediction_step(self, args, state, control, **kwargs):
        if not self._setup(args, state, kwargs):
            return
        if self._eval is None:
            if not self._warned_late:
                self._warned_late = True
                log.warning("meter: an evaluation loop started without a dataloader meter could see; its span "
                            "opens after its first batch (pass an accelerate-prepared dataloader, as the Trainer does)")
            self._open_eval()
        if self._group is not None:
            samples, tokens, generated = self._group
            self._tallies[self._eval.span_id].add(samples, tokens, output_tokens=generated)
        self._group = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._end_eval(args, state, None, metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._end_eval(args, state, "predict", metrics)

    def _end_eval(self, args, state, rename: str | None, metrics: dict | None) -> None:
        self._group = None
        if not self._active or self._eval is None:
            return
        span = self._eval
        if rename:
            span.rename(rename)
            span.tags["kind"] = rename
        if metrics is not None and self.log_metrics:
            prefix = metric_prefix(metrics, "test" if rename else "eval")
            metrics.update({k: v for k, v in self._stage_figures(span, prefix).items() if k not in metrics})
        self._close(span)
        self._eval = None
        if self._train is not None:
            self.watch.nested(span)
        elif self.write_card and state.is_world_process_zero:
            self.cards.defer(self._meter, args.output_dir)

    # -- logs ----------------------------------------------------------------------------------
    def _stage_figures(self, span, prefix: str) -> dict[str, float]:
        self._tallies[span.span_id].flush(span)
        snap = span.snapshot()
        return figures(self._meter, snap, None, snap.counts, prefix)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._active or not self.log_metrics or logs is None:
            return
        if self._eval is not None and any(k.endswith("_runtime") for k in logs):
            values = self._stage_figures(self._eval, metric_prefix(logs, "eval"))
        elif self._train is not None:
            self._tallies[self._train.span_id].flush(self._train)
            snap = self._train.snapshot()
            if snap.energy_j is None:
                return
            nested = self.watch.nested_j + (self._eval.snapshot().energy_j or 0.0 if self._eval is not None else 0.0)
            snap, own, counts, n = job_wide(self._meter, f"train-{state.global_step}", snap, snap.energy_j - nested, snap.counts)
            values = figures(self._meter, snap, own, counts, "")
            if n > 1:
                values["meter_ranks"] = n
            values.update(self.watch.log_keys())
        else:
            return
        values = {k: v for k, v in values.items() if k not in logs}
        logs.update(values)
        # Trainer.log appended a copy of these logs to log_history just before this event.
        if state.log_history and all(state.log_history[-1].get(k) == v for k, v in logs.items() if k not in values):
            state.log_history[-1].update(values)
