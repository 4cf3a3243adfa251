"""classifier_lib: train, evaluate and explain a from-scratch residual CNN image classifier."""
__version__ = "0.1.0"
