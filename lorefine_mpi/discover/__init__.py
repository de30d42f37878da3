"""`lorefine discover`: the rigid modules of a complex proposed from the data (issue 31)."""
