"""The history encoder: ``model`` (the network), ``layers`` (its branches), ``state`` (incremental encoding),
``io`` (files)."""
