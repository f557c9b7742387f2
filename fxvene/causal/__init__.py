"""pyvene's CausalModel: high-level causal models, their datasets and plots (for DAS).

May import: nothing else of fxvene (the standard library, torch, numpy; matplotlib for plots).
"""
