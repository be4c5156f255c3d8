"""Attention tab (placeholder until issue 3 lands)."""
import gradio as gr


def build_attention_tab(manager):
    text = gr.Textbox(label="Text", lines=3)
    return {"text": text, "on_text": dict(fn=lambda t: None, inputs=[text], outputs=None, api_visibility="private")}
