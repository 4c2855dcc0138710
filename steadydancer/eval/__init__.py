"""Evaluation: the paper's Table 2 metrics, their backbones, the protocols and the report.

- :mod:`.metrics`: model-free formulas (PSNR, SSIM, Fréchet distance, temporal flickering).
- :mod:`.inception`, :mod:`.lpips`, :mod:`.i3d`, :mod:`.vit`: the networks, each loaded from the
  standard weight file a user downloads (no torchvision, nothing fetched at run time).
- :mod:`.vbench`: VBench / VBench-I2V dimensions by VBench's own formulas.
- :mod:`.weights`: which file each network needs, looked up by its usual name in ``--weights``.
- :mod:`.protocols`: the HumanVid (TikTok) and VBench-I2V protocols over folders of videos.
- :mod:`.report`: report.json, the Markdown table in the layout of the paper's Table 2, PNG plots.
"""
