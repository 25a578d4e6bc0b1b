"""Dataset sources, one module each; `src.data` imports them all, which registers the datasets."""
