"""The bottom layer: settings, errors, input checks, the sampling settings, tokens, the cache, exports
and links. No model runtime, no Gradio."""
