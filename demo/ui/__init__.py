"""The Gradio page: one module per tab, the page shell that assembles them, and what they share.

No model logic here: handlers validate their inputs (:mod:`demo.core.validation`), call the backend,
generation and analysis modules, and format what those return. See docs/architecture.md.
"""
