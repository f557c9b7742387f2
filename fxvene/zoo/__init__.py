"""Models to try fxvene on: pyvene's model helpers (create_gpt2, ...), pyvene's toy MLP and GRU, and the
small GPT-2 shipped with the package (demo).

May import: fxvene.graph (progress messages).
"""
