"""The cost model's coefficients (`refine.cost`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Produced by: (not yet fitted)
"""

BAND_FRACTION = 0.5
COEFFICIENTS = {}
