"""Using a trained model: classify, embed, search a gallery, verify, identify, cluster.

`load(checkpoint)` gives the model wrapped with its own preprocessing; `Index` searches in the model's own
metric (exact in torch, or faiss when installed); images stream from folders a batch at a time.
"""
