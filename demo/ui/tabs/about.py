"""The About tab: what a GPT is and what each tab shows, for someone who has never read the code."""

from __future__ import annotations

import gradio as gr

ABOUT = """
### What is this?
A GPT is a neural network that reads a text as a row of **tokens** (words or pieces of words) and, at
every position, gives a probability to each possible next token. Generating text means picking one of
those tokens, appending it, and repeating.

* **Generate** — type a prompt and watch the model continue it token by token. The sampling settings
  decide how the next token is picked from the model's probabilities. Each generated token is coloured
  by how likely it was; **click one** to see the distribution it was drawn from and where the model
  looked when it wrote it. The **surprise timeline** shows, token by token, how surprised the model was
  by its own pick.
* **Samples** — the same prompt continued several times at once, one seed (one roll of the dice) each,
  and, if you like, the same seeds under another temperature: what the samples share is what the
  model is sure of.
* **Attention** — inside each layer, every *attention head* decides how much each token looks at the
  tokens before it. The heatmaps show those weights.
* **Next token** — the model's probabilities for the next token, before and after the sampling
  settings filter them. You can drive the model one token at a time.
* **8-bit vs full** — what storing the model's weights in 8 bits (to save memory) changes in its
  predictions and its attention, position by position.
* **Copy a link to this view** — a link that opens the page exactly as you see it (model, prompt,
  settings, seed, tab, view): put it on a slide and the whole class sees the same picture.

The default model, **gutenberg-gpt**, is a small GPT-2 this project trained from scratch on 147
public-domain books (see `models/gutenberg-gpt/README.md`). It writes 19th-century-flavoured prose, often
ungrammatical: it is small on purpose, so it runs anywhere. It is not a chat model.
"""


def build(tab: gr.Tab) -> None:
    """The About tab's contents, built inside ``tab``."""
    gr.Markdown(ABOUT)
