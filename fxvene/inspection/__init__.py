"""Reading graphs: site and component tables of a traced model, and graph diffs between a traced
graph and a rewritten one (text and Graphviz).

May import: fxvene.models, fxvene.passes, fxvene.interventions, fxvene.graph.
"""
