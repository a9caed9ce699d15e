"""What the Trainer callback reads from a model's calls: the counts of a forward's inputs, the
tokens ``generate()`` produced, a wrapper that reports ``generate()`` calls, and metric prefixes.
Imports no framework; tensors are used through their methods only."""

from __future__ import annotations

import functools
from typing import Any, Callable

#: Trainer events after which a training step was under way (an exception there means the
#: training stopped, so a later evaluation is not part of it).
MID_STEP = ("step_begin", "substep_end", "pre_optimizer_step", "optimizer_step")


def input_counts(args: tuple, kwargs: dict, main: str = "input_ids") -> tuple[int | None, Any, Any]:
    """(samples, tokens, main input) of a forward's inputs; tokens may be a device tensor."""
    ids = kwargs.get(main)
    if ids is None:
        ids = kwargs.get("input_ids")
    if ids is None and args and hasattr(args[0], "shape"):
        ids = args[0]
    mask = kwargs.get("attention_mask")
    if ids is None:
        for v in kwargs.values():  # pixel_values, input_features, inputs_embeds: samples only
            if hasattr(v, "shape") and len(v.shape) > 0:
                return int(v.shape[0]), None, None
        return None, None, None
    if len(ids.shape) == 0:
        return 1, None, ids
    if ids.dtype.is_floating_point:  # features, not token ids
        return int(ids.shape[0]), None, ids
    tokens = mask.sum() if mask is not None and getattr(mask, "shape", None) == ids.shape else ids.numel()
    return int(ids.shape[0]), tokens, ids


def generated_tokens(model: Any, kwargs: dict, ids: Any, out: Any) -> Any:
    """Tokens ``generate()`` added that are not padding (a device tensor), or None if unknown.
    Encoder-decoder outputs start with the decoder start token; decoder-only ones with the prompt."""
    seq = getattr(out, "sequences", out)
    if not (hasattr(seq, "shape") and len(seq.shape) == 2):
        return None
    cfg = getattr(model, "config", None)
    if getattr(cfg, "is_encoder_decoder", False):
        start = 1
    else:
        start = ids.shape[1] if ids is not None and len(ids.shape) == 2 else 0
    gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    pad = getattr(gen_cfg, "pad_token_id", None)
    if pad is None:
        pad = getattr(cfg, "pad_token_id", None)
    new = seq[:, start:]
    return (new != pad).sum() if pad is not None else new.numel()


def wrap_generate(model: Any, before: Callable[[], bool], after: Callable[[tuple, dict, Any], None]) -> Callable:
    """Replace ``model.generate`` (on the instance) by a wrapper that calls ``before()`` and, if it
    returned True, ``after(args, kwargs, output)`` around the outermost call. ``generate()`` has
    no hook; this lets a prediction step count its inputs once and its generated tokens."""
    original = model.generate
    depth = [0]

    @functools.wraps(original)
    def generate(*args, **kwargs):
        outer = depth[0] == 0 and before()
        depth[0] += 1
        try:
            out = original(*args, **kwargs)
        finally:
            depth[0] -= 1
        if outer:
            after(args, kwargs, out)
        return out

    generate.meter_depth = depth
    model.generate = generate
    return generate


def metric_prefix(metrics: dict, default: str) -> str:
    """The Trainer's metric_key_prefix (``eval``, ``test``, ``eval_<name>``) from its speed metrics."""
    for k in metrics:
        if k.endswith("_runtime"):
            return k[: -len("runtime")]
    return default + "_"
