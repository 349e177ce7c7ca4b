"""Analysis of replays and captures: results are polars DataFrames and plain dicts, no plotting."""
