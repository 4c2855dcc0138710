"""Run a function in N local CPU processes joined by a gloo process group (tests, checks).

``run_on_gloo(fn, world_size, *args)`` spawns the processes, calls ``fn(rank, world_size, *args)``
in each, and returns the list of their return values (rank order). ``fn`` must be importable
(a module-level function), as the processes are started with ``spawn``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """An unused TCP port on localhost for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)  # N processes share few cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result: Any = fn(rank, world_size, *args)
        torch.save({"ok": result}, Path(out_dir) / f"{rank}.pt")
        # No rank tears the group down while another may still be in a collective (gloo then
        # aborts the process from a background thread: "terminate called without an active exception").
        dist.barrier()
    except BaseException:
        torch.save({"error": traceback.format_exc()}, Path(out_dir) / f"{rank}.pt")
        raise
    finally:
        dist.destroy_process_group()


def run_on_gloo(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; their results."""
    with tempfile.TemporaryDirectory(prefix="sd_gloo_") as out_dir:
        try:
            mp.spawn(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        except Exception as exc:
            errors = []
            for rank in range(world_size):
                path = Path(out_dir) / f"{rank}.pt"
                if path.exists():
                    record = torch.load(path, weights_only=False)
                    if "error" in record:
                        errors.append(f"rank {rank}:\n{record['error']}")
            raise RuntimeError("\n".join(errors) or str(exc)) from exc
        return [torch.load(Path(out_dir) / f"{rank}.pt", weights_only=False)["ok"] for rank in range(world_size)]
