"""Layer 0, below everything: files written atomically, project paths, run folders, progress bars, devices and
mixed precision, torch.distributed helpers. Imports nothing else of the package.
"""
