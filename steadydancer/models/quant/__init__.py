"""Low-precision DiT weights: FP8 e4m3 with per-tensor scales (fp8.py) and GGUF (gguf.py).

Both replace the ``nn.Linear`` layers inside the transformer blocks with modules that keep the
weight in its stored low-precision form and dequantise it on the fly, per layer, to the compute
dtype. Everything outside the blocks (embeddings, pose modules, head) stays in the compute dtype.
"""

from steadydancer.models.quant.fp8 import (FP8Linear, check_fp8_matmul_supported, load_fp8_scaled,
                                           quantize_model_fp8, save_fp8_scaled)
from steadydancer.models.quant.gguf import GGUFLinear, dequantize, load_gguf, save_gguf

__all__ = ["FP8Linear", "check_fp8_matmul_supported", "load_fp8_scaled", "quantize_model_fp8",
           "save_fp8_scaled", "GGUFLinear", "dequantize", "load_gguf", "save_gguf"]
