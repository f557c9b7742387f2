"""The graph plots of a CausalModel (``print_structure``, ``print_setting``); matplotlib is optional."""

from __future__ import annotations


def draw(model, labels, pos, font, node_size):
    """Draw ``model``'s graph with node ``v`` labelled ``labels[v]`` at ``pos[v]`` and show it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("CausalModel's plots need matplotlib (pip install matplotlib)") from None
    import networkx as nx

    missing = [v for v in model.variables if v not in pos]
    if missing:
        raise ValueError(f"pos: no position for {missing}; give every variable an (x, y)")
    graph = nx.DiGraph()
    graph.add_nodes_from(labels[v] for v in model.variables)  # isolated variables are drawn too
    graph.add_edges_from((labels[p], labels[c]) for c in model.variables for p in model.parents[c])
    plt.figure(figsize=(10, 10))
    nx.draw_networkx(
        graph,
        pos={labels[v]: pos[v] for v in model.variables},
        with_labels=True,
        node_color="green",
        font_size=font,
        node_size=node_size,
    )
    plt.show()
