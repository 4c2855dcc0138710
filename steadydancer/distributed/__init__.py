"""distributed stage: multi-process generation under torchrun.

- ``launch``: flag checks (one-line errors), process group (NCCL on GPU, gloo on CPU), seed
  broadcast, :class:`DistributedSetup` (``prepare_dit``, ``prepare_text_encoder``, ``is_main``).
- ``sequence_parallel``: :class:`SequenceParallelDiT`, the DiT with its tokens split over the ranks.
- ``attention``: Ulysses x ring attention (pure torch; xfuser on CUDA when importable).
- ``cfg_parallel``: the guidance passes of a step dealt over the ranks of a CFG group, predictions gathered.
- ``fsdp``: FSDP2 sharding of DiT and T5 blocks.
- ``pipeline`` / ``cli``: the generation pipeline and command under torchrun (rank 0 writes).
- ``testing``: ``run_on_gloo`` to run a function in N local CPU processes.

Submodules are imported on use (torch.distributed is not needed by a single-GPU run).
"""
