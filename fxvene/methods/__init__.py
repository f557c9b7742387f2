"""Research methods as rewrites: attribution patching and path patching.

May import: everything below it: fxvene.models, passes, interventions, graph, inspection, api, zoo, sweeps.
"""
