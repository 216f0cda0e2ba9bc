"""qdeploy: one golden quantized model, three hardware targets, one parity report.

The data flows one way: quant -> compilers -> targets -> reference.
This package holds only what all four share: errors, atomic file writes, the recipe,
the step runner and the command line.
"""
__version__ = "0.1.0"
