"""Baselines compared with PixelNN on the same prepared data and metrics.

- :mod:`pixelnn.baselines.pix2pix`: pix2pix (Isola et al. 2017), a conditional GAN sampled with
  dropout on, as in the paper's Fig. 2.
"""
