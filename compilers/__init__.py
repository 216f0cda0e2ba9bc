"""compilers: lower a trained, quantized model to one target's artifacts (FINN, NPU, GPU)."""
