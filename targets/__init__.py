"""targets: build and run the compiled models on each device (FPGA, NPU, GPU)."""
