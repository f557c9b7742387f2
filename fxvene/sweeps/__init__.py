"""Sweeps as batches: the sweep engine (a traced graph cut into segments, rows packed in lanes or
grouped by start position), patching grids and ROME causal tracing of one prompt or a dataset of facts,
their results and figures, and data-parallel runs on torch.distributed.

May import: fxvene.models, fxvene.passes, fxvene.interventions, fxvene.graph, fxvene.inspection, fxvene.api, fxvene.zoo (the demo's facts).
"""
