"""Layer 7: many steps at once. The notebook pipeline and its HTML reports (`pipeline`), sweeps (`sweep`)."""
