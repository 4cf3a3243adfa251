"""Layer 6: training. The state a checkpoint holds and its resume checks (`state`), the steps of one epoch
(`trainer`), validation (`validation`), the epoch loop with its run files (`engine`), optimiser and schedule
(`optim`), TensorBoard figures (`tb_figures`), the learning-rate finder (`lr_finder`), launching under
torchrun (`launch`).
"""
