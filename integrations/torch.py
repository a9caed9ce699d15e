"""Plain PyTorch loops: counted batches, per-N-step spans, FLOP counting, peak GPU memory.

    from meter.integrations.torch import counted, stage

    with stage("finetune", flops=True) as span:       # a meter span + FLOPs + peak CUDA memory
        for epoch in range(3):
            with meter.track(f"epoch-{epoch}"):
                for batch in counted(loader, every=100):  # samples/tokens into the open span;
                    step(batch)                           # a child span per 100 steps

Spans already synchronise CUDA at their edges (``Meter(sync_cuda=True)``, the default), so
asynchronous kernels are charged to the stage that launched them; :func:`sync` is the same wait
for your own use. Uses meter's public API only.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator

from ._common import Tally, missing

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess without torch
    raise missing(None, "torch", "meter.integrations.torch", _exc) from _exc

import meter


def sync() -> None:
    """Wait for queued CUDA work (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def lazy_counts(batch: Any) -> tuple[int | None, Any]:
    """(samples, tokens) of a batch without reading the device: tokens may be a tensor
    (``attention_mask.sum()``) for :class:`~meter.integrations._common.Tally` to sum on the device."""
    if isinstance(batch, dict):
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
        if ids is not None:
            return int(ids.shape[0]), mask.sum() if mask is not None else ids.numel()
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
        return (int(first.shape[0]) if first is not None else None), None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return (int(batch[0].shape[0]) if batch[0].dim() > 0 else None), None
    if isinstance(batch, torch.Tensor) and batch.dim() > 0:
        return int(batch.shape[0]), None
    return None, None


def batch_counts(batch: Any) -> tuple[int | None, int | None]:
    """(samples, tokens) of a batch: a tensor, a (inputs, targets) tuple or a dict with
    ``input_ids`` and optionally ``attention_mask`` (tokens = mask sum, so padding is not counted).
    Reads the token count from the device; loops use :func:`counted`, which does not."""
    samples, tokens = lazy_counts(batch)
    return samples, (None if tokens is None else int(tokens))


def counted(iterable: Iterable, *, every: int | None = None, name: str = "steps", meter_: "meter.Meter | None" = None,
            span: "meter.Span | None" = None, tokens: bool = True, progress: Any = None,
            progress_every_s: float = 1.0) -> Iterator:
    """Yield the batches of ``iterable``, adding each one's samples (and tokens) to ``span`` (by
    default the span open when iteration starts). With ``every=N``, each group of N steps runs
    inside its own child span ``{name}-{first}-{last}`` (the steps it really ran), which gets the
    counts too. Token counts stay on the device until a child span closes or the loop ends.

    ``progress``: a tqdm bar (or ``True`` when ``iterable`` is one) whose postfix shows the joules
    and average watts of ``span`` so far, refreshed at most every ``progress_every_s`` seconds.
    """
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise meter.ConfigError(f"every={every!r}: give a positive number of steps, or None")
    bar = iterable if progress is True else progress
    if bar is not None and not callable(getattr(bar, "set_postfix", None)):
        raise meter.ConfigError("progress=: give a tqdm bar (anything with set_postfix), or True when iterating one")
    target = span if span is not None else meter.current_span()
    outer, inner = Tally(), Tally()
    open_track = child = None
    first = step = 0
    shown = 0.0

    def close_child() -> None:
        nonlocal open_track, child
        if open_track is None:
            return
        inner.flush(child)
        outer.flush(target)
        if step - 1 != first + every - 1:
            child.rename(f"{name}-{first}-{step - 1}")
        open_track.__exit__(None, None, None)
        open_track = child = None

    try:
        for batch in iterable:
            if every is not None and step % every == 0:
                close_child()
                factory = meter_.track if meter_ is not None else (target.meter.track if target is not None else meter.track)
                open_track = factory(f"{name}-{step}-{step + every - 1}")
                child = open_track.__enter__()
                first = step
            samples, toks = lazy_counts(batch)
            if not tokens:
                toks = None
            outer.add(samples, toks)
            if child is not None:
                inner.add(samples, toks)
            step += 1
            yield batch
            # After the step ran and before the bar draws the next one (a tqdm bar closes itself
            # when its iterable ends, so there is no later chance for the last step).
            if bar is not None and time.monotonic() - shown >= progress_every_s:
                shown = time.monotonic()
                show_progress(bar, target if target is not None else child)
    finally:
        close_child()
        outer.flush(target)


def show_progress(bar: Any, span: "meter.Span | None") -> None:
    """Put a span's joules and average watts so far into a tqdm bar's postfix."""
    if span is None:
        return
    snap = span.snapshot()
    if snap.energy_j is None:
        return
    post = {"J": f"{snap.energy_j:.4g}"}
    if snap.avg_power_w is not None:
        post["W"] = f"{snap.avg_power_w:.4g}"
    bar.set_postfix(post, refresh=True)


class FlopCount:
    """Counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` while open; ``total``."""

    def __init__(self, span: "meter.Span | None" = None):
        from torch.utils.flop_counter import FlopCounterMode

        self._mode = FlopCounterMode(display=False)
        self.span = span
        self.total = 0

    def __enter__(self) -> "FlopCount":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self.total = int(self._mode.get_total_flops())
        span = self.span or meter.current_span()
        if span is not None and not span.closed and self.total:
            span.add(flops=self.total)


@contextlib.contextmanager
def stage(name: str, *, flops: bool = False, memory: bool = True, meter_: "meter.Meter | None" = None,
          **track_kwargs: Any):
    """A meter span that also counts FLOPs (``flops=True``; off by default: FlopCounterMode
    intercepts every op and slows eager PyTorch down, see docs/trainer-and-torch.md) and records
    peak CUDA memory (``tags["peak_gpu_memory_bytes"]``) where CUDA is in use."""
    track = (meter_.track if meter_ is not None else meter.track)(name, **track_kwargs)
    cuda = memory and torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with track as span:
        counter = FlopCount(span) if flops else contextlib.nullcontext()
        with counter:
            yield span
        if cuda:
            span.tags["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
