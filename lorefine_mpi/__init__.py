"""lorefine: local optimization refinement (LO-refinement) of rigid modules in cryo-EM."""

__version__ = "0.1.0"
