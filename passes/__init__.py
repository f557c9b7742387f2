"""Graph -> graph rewrites: each a small pure function on a torch.fx GraphModule (locate a component's
node, insert intervention calls, expose and truncate, sweep selectors, row packing, path rewiring).

May import: torch, the standard library and fxvene.models (no fxvene runtime state).
"""
