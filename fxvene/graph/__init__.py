"""The graph runtime: tracing a model into an fx graph (hf_fx, torch.export), what a model takes and
returns, the on-disk graph cache and its format, KV-cache step graphs, torch.compile, the train / eval mode sweeps
run in, and sites (where a component is in a graph, and the ops that read and write it there).

May import: fxvene.models, fxvene.passes, fxvene.interventions (the ops at a site call them).
"""
