"""Constants of the official I2V-14B configuration that the generation pipeline uses.

File names are the released checkpoint folder's; sizes, shifts and the negative prompt are those
of Wan 2.1's ``i2v-14B`` config and SteadyDancer's ``generate_dancer.py``.
"""

from __future__ import annotations

# checkpoint folder layout (SteadyDancer-14B/)
DIT_CONFIG = "config.json"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER = "google/umt5-xxl"
CLIP_CHECKPOINT = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CLIP_TOKENIZER = "xlm-roberta-large"  # unused by the vision tower, but part of the official folder
VAE_CHECKPOINT = "Wan2.1_VAE.pth"

NUM_TRAIN_TIMESTEPS = 1000
SAMPLE_FPS = 16
VAE_STRIDE = (4, 8, 8)  # time, height, width
DEFAULT_FRAME_NUM = 81
DEFAULT_STEPS = 40  # i2v

# Wan's default negative prompt with the i2v "镜头晃动，" (camera shake) prefix.
NEGATIVE_PROMPT = (
    "镜头晃动，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

# --size (width*height) -> pixel area the output may cover; the aspect ratio is the image's.
MAX_AREA_CONFIGS = {
    "720*1280": 720 * 1280,
    "1280*720": 1280 * 720,
    "480*832": 480 * 832,
    "832*480": 832 * 480,
    "576*1024": 576 * 1024,
    "1024*576": 1024 * 576,
    "1024*800": 1024 * 800,
}
SUPPORTED_SIZES = tuple(MAX_AREA_CONFIGS)
SIZE_CONFIGS = {k: tuple(int(v) for v in k.split("*")) for k in SUPPORTED_SIZES}
DEFAULT_SIZE = "1280*720"


def default_shift(size: str) -> float:
    """The official default sample shift for i2v: 3.0 at 480p sizes, else 5.0."""
    return 3.0 if size in ("832*480", "480*832") else 5.0
