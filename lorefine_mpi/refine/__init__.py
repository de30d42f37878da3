"""LO-refinement: the stages of a run (split, search, reconstruct), serial code driven by `parallel/`."""
