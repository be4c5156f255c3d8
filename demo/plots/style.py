"""What every figure shares: the font (the page's own, 12 px, readable on a projector)."""

FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=12)
