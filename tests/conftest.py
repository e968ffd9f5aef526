"""Suite-wide settings.

Parity tests compare with CPU references (golden files, torchvision, the notebooks' inline
versions). On a TPU, and on GPUs with TF32, jax's default matmul and convolution precision is
lower than float32; ask for full float32 so the same tolerances hold on every backend. On a CPU
this changes nothing.
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
