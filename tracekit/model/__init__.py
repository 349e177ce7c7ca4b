"""Models: how dispatch and combine of one MoE layer become a task graph on a modelled cluster."""
