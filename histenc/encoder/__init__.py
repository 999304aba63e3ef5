"""The history encoder: ``model`` (the network), ``layers`` (its branches), ``lowres`` (the low-resolution
branch's input: averaged latents or the VAE's pixel path), ``state`` (incremental encoding), ``io`` (files)."""
