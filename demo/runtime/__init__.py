"""Models at run time: the catalogue, loading, the pool, the batched decode loop, generation, ZeroGPU. No Gradio."""
