"""Next-token tab (placeholder until issue 4 lands)."""
import gradio as gr


def build_next_token_tab(manager, controls):
    text = gr.Textbox(label="Text", lines=3)
    return {"text": text, "on_text": dict(fn=lambda t: None, inputs=[text], outputs=None, api_visibility="private")}


def build_token_view(manager, last_generation, prompt, controls):
    return {"on_generation": dict(fn=lambda r: None, inputs=[last_generation], outputs=None, api_visibility="private")}
