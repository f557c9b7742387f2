"""Models whose weights are sharded across processes (``DTensor``): refused before tracing, clearly.

A model loaded with transformers' tensor parallelism (``from_pretrained(..., tp_plan="auto")`` or
``distributed_config=DistributedConfig(tp_plan=...)`` under torchrun) or wrapped by FSDP2 holds
``torch.distributed.tensor.DTensor`` parameters: each process keeps a slice of a weight, and the
model's forward runs collectives between the slices. Neither tracer follows that (torch.export stops
at the tensors' sharding specs), and a site inside a sharded layer holds a partial value (one rank's
columns, or a sum not yet reduced), so fxvene refuses such a model with a ``ValueError`` that says
what runs instead: pipeline stages (each rank a run of whole blocks) or accelerate's ``device_map``.
"""

from __future__ import annotations

import sys


def first_sharded_weight(model):
    """``(name, tensor)`` of the first parameter or buffer of ``model`` that is a ``DTensor``, or None."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no weight can be a DTensor
    if dtensor is None:
        return None
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if isinstance(t, dtensor.DTensor):
            return name, t
    return None


def check_not_sharded(model):
    """Raise ``ValueError`` if ``model`` holds sharded (``DTensor``) weights; the message names the
    first such weight, its mesh size and what to use instead."""
    found = first_sharded_weight(model)
    if found is None:
        return
    name, t = found
    ranks = t.device_mesh.size()
    how = "tp_plan" if (getattr(model, "_tp_size", None) or 1) > 1 else "sharded"
    raise ValueError(
        f"model: {type(model).__name__} holds DTensor weights over {ranks} ranks ({how}, e.g. {name}); fxvene"
        " cannot trace tensor-parallel models.\nLoad it without tp_plan: use pipeline stages"
        " (pv.pipeline_intervenable) or accelerate's device_map."
    )
