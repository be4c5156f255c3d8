"""What every figure shares: the font (the page's own, 12 px, readable on a projector) and the colour
scale of every heatmap."""

from plotly.colors import make_colorscale, sequential

FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)

# Light = low, dark = high, as every note on the page says ("darker = more attention / more confident").
# Given as explicit [position, colour] pairs: a named scale passed unvalidated reaches plotly.js, whose
# own "Blues" runs the other way (dark at the low end).
SEQUENTIAL = [[float(p), c] for p, c in make_colorscale(sequential.Blues)]
