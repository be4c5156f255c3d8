"""Figures and the token views' HTML from the analysis' plain data. No Gradio."""
