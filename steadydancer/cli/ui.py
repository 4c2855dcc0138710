"""``steadydancer ui``: the web UI (Gradio) on the Python API; models loaded once, one job at a time."""

from __future__ import annotations

import argparse

from ..errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .generate import str2bool

    parser.add_argument("--ckpt_dir", required=True, help="SteadyDancer-14B checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", type=str2bool, default=False,
                        help="also serve through a public gradio.live link (default false)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--offload_model", type=str2bool, default=None,
                        help="move each model off the GPU after its stage (default: True)")
    parser.add_argument("--t5_cpu", action="store_true", default=False, help="run T5 on the CPU")
    parser.add_argument("--work_dir", default=None,
                        help="folder for the prepared poses, never served (default: a new temporary folder)")
    parser.add_argument("--output_dir", default=None,
                        help="folder of the finished videos and their settings (X.mp4 + X.json), shown as the "
                             "page's gallery (default: videos/ in the work folder)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS",
                        help="ask for this user name and password (needed when serving beyond this machine)")
    parser.add_argument("--lora_dir", default=None,
                        help="folder of LoRA files (*.safetensors) the page offers, each with a strength")
    parser.add_argument("--allow_any_size", action="store_true", default=False,
                        help="accept pixel areas above the largest official size (default: refused, one "
                             "request could exhaust the memory)")
    # the same memory/speed flags as generate (block swap for 24-48 GB cards, FP8/GGUF, LoRA, ...)
    from ..models.memory import add_memory_arguments

    add_memory_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError('the web UI needs gradio: pip install -e ".[ui]"') from None
    from ..models.memory import memory_options_from_args
    from ..ui.app import build_app, launch

    auth = parse_auth(args.auth)
    demo = build_app(args.ckpt_dir, work_dir=args.work_dir, output_dir=args.output_dir,
                     allow_any_size=args.allow_any_size, lora_dir=args.lora_dir, device=args.device,
                     offload_model=args.offload_model,
                     t5_cpu=args.t5_cpu, memory=memory_options_from_args(args))
    print(f"serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    launch(demo, host=args.host, port=args.port, share=args.share, block=True, auth=auth)
    return 0


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``--auth USER:PASS`` -> (user, password); InputError for anything else."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError(f"--auth {value!r}: expected USER:PASS (both non-empty)")
    return user, password
