"""Parts of the long-memory generation benchmark (bench/long_memory.py): settings, data, generation, scores."""
