"""Plain and residual networks for the degradation experiments of He et al. (2016)."""
