"""GPT Explorer: try a GPT language model and see inside it."""
