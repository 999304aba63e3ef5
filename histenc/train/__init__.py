"""Training: LoRA finetunes on cached datasets, the generic loop they run in, procedural long-memory data.

``trainer.run_training`` is the one entry point the training nodes and ``python -m histenc.train`` share.
"""
