"""PyTorch reference of the QLR-CL learning loop (benchmark code; never imported by `clq`).

A faithful port of the latent-replay loop of vlomonaco/ar1-pytorch (`ar1free_lat_replay.py`, the code
behind Pellegrini et al. 2020 and the loop Ravaglia et al. 2021 build on), run on clq's stream, model and
hyper-parameters so that its time and accuracy can be set beside clq's:

* `model`: MobileNet-V1 built as `torch.nn` modules from clq's own layer specs (`clq.model.specs`), TF 'SAME'
  padding, batch norm for event 0, folded afterwards (as clq does);
* `ar1`: event 0 (whole network), then per learning event the ar1-pytorch loop: new images pass through the
  frozen stage in every training iteration, replays (FP32 latents) are concatenated at the latent layer,
  the buffer is updated with the AR1 rule, and the whole network is evaluated on the test images.

`ar1.run_reference(..., cache_latents=True)` is the same loop with clq's pipeline (each image crosses the
frozen stage once, test latents cached), to separate what the pipeline buys from what compilation buys.
"""

from bench.torch_ref.ar1 import ReferenceConfig, run_reference
from bench.torch_ref.model import AdaptiveStage, FrozenStage, MobileNetBN, fold_batch_norm, params_from_clq

__all__ = ["ReferenceConfig", "run_reference", "AdaptiveStage", "FrozenStage", "MobileNetBN", "fold_batch_norm",
           "params_from_clq"]
