"""Layer 3: networks. The residual CNN (`resnet`), the average of several (`ensemble`), the moving average of
weights (`ema`), and looking inside a network: activations and Grad-CAM (`explain`).
"""
