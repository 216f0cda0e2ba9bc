"""reference: parity, benchmarks and reports across every target."""
