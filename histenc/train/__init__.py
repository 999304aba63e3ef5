"""Training: LoRA finetunes on cached datasets, the generic loop they run in, procedural long-memory data."""
