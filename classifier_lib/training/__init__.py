"""Layer 6: training. One run's state and steps (`trainer`), the epoch loop with its run files (`engine`),
optimiser and schedule (`optim`), TensorBoard figures (`tb_figures`), the learning-rate finder (`lr_finder`),
launching under torchrun (`launch`).
"""
