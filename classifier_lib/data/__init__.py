"""Layer 2: image files to labelled uint8 tensors. Decoding (`images`), the folder layout (`folders`), the
on-disk cache (`cache`), which files train and which are held out (`splits`), the splits as datasets
(`dataset`), batch augmentation and model input (`augment`), per-file statistics (`stats`).
"""
