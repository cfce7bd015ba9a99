"""Side-by-side benchmarks against other engines (transformers, llama.cpp) on the same model.

``python -m mlcpatch.peers`` (``make bench-peers``); see :mod:`mlcpatch.peers.main`.
"""
