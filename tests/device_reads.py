"""A tensor subclass that counts host reads of values summed from it (a device sync on a GPU)."""

import torch


class DeviceReads(torch.Tensor):
    """A tensor that counts reads of values derived from its sums back to the host, the reads that
    are a device synchronisation on a GPU (``item``, ``int``, ``bool``, ``tolist``)."""

    reads = 0
    READS = {torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.tolist,
             torch.Tensor.__index__, torch.Tensor.__float__}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls.READS and getattr(args[0], "_summed", False):
            cls.reads += 1
        out = super().__torch_function__(func, types, args, kwargs or {})
        if isinstance(out, DeviceReads) and (func is torch.Tensor.sum or any(getattr(a, "_summed", False) for a in args)):
            out._summed = True
        return out
