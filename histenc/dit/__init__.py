"""DiT adapters: one module per family, the only code that knows how a family's forward runs.

``payload`` carries the context into the forward; ``rope`` holds the box-averaged rotary phases;
``wan`` and ``hunyuan`` hook the stock forwards of ComfyUI's native models.
"""
