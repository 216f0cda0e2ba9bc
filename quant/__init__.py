"""quant: datasets, models, quantization-aware training and export (the golden models)."""
