"""The torch runtime: BLIP's parts in torch, loading, the Captioner, cross-attention, embeddings, compiling, the ONNX exporter."""
