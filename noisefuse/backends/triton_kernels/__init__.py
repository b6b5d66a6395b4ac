"""Multi-tensor fused Triton kernels of the noisefuse step.

- ``kernels``: the ``@triton.jit`` kernels (per-tensor coefficients and counters; per-element update).
- ``grad``: ``form_grad``, the gradient formed in registers (AMP, maximize, gradient noise, L2 decay).
- ``tables``: the device tables of data pointers, noise offsets, sizes and the block map, cached by pointers;
  the launch shape per GPU generation.
- ``launch``: the host launcher (validation, float64 hyperparameters as float32 pairs, two launches).
- ``op``: ``torch.ops.noisefuse.triton_fused_step_``, the registered op ``backends.triton`` calls.

See docs/backends/triton.md.
"""
