"""Build recipes: HF weights -> shards + compiled library."""
