"""The attention views by name: what the Attention tab, a link and the /attention API may ask for
(:mod:`demo.analysis.attention` computes them)."""

VIEWS = {
    "head": "One head",
    "heads": "All heads of a layer",
    "aggregate": "Average / strongest",
    "token": "One token",
}
AGGREGATES = {
    "mean-heads": "Average over the heads of this layer",
    "max-heads": "Strongest head of this layer (max)",
    "mean-layers": "Average over the layers (this head number)",
    "max-layers": "Strongest layer (max, this head number)",
    "mean-all": "Average over every layer and head",
    "max-all": "Strongest of every layer and head (max)",
}
SCOPES = {"layer": "Every head of this layer", "all": "Every head of every layer"}
