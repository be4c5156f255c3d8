"""What the model does, as plain data: attention, the next token, a generated token's step, samples
side by side, the cost of 8 bits. No Gradio."""
