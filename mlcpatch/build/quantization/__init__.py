"""Quantized weights: the modes (``modes``), the 4-bit stored format (``q4_format``), the
kernels that read it (``group_quant``) and their benchmark (``bench``)."""
