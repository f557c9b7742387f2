"""pyvene 0.1.8's API: IntervenableConfig/RepresentationConfig, IntervenableModel and its parts (building,
call planning, source runs, unit locations and their checks), pyvene's training loop, generation, saving
and loading, and pyvene's basic_utils.

May import: fxvene.models, fxvene.passes, fxvene.interventions, fxvene.graph, fxvene.inspection.
"""
