"""A fabricated sweep folder in the exact layout clq-run + Hydra write (results.json, .hydra/*.yaml)."""

import json
import os

import pytest
import yaml

from clq.cost import cost_report, load_target
from clq.model.specs import mobilenet_v1_specs

SPECS = mobilenet_v1_specs(0.25, 16, 10, 3, "relu")


def write_member(root, job, *, layer=23, bits=8, size=40, seed=0, acc=(0.2, 0.4, 0.5), status="completed",
                 error=None, write_results=True, failure=None):
    """One member folder `root/job`; results.json carries the real cost model report of its config."""
    d = os.path.join(root, str(job))
    os.makedirs(os.path.join(d, ".hydra"), exist_ok=True)
    overrides = [f"latent_layer={layer}", f"replay.bits={'fp32' if bits is None else bits}",
                 f"replay.size={size}", f"seed={seed}"]
    config = {"model": {"name": "mobilenet_v1", "width": 0.25, "input_size": 16, "num_classes": 10},
              "data": {"name": "fashion_mnist"}, "quant": {"frozen_bits": 8},
              "replay": {"policy": "ar1", "size": size, "bits": "fp32" if bits is None else bits},
              "train": {"strategy": "qlr"}, "tracking": {"group": "fake"}, "target": {"name": "vega"},
              "latent_layer": layer, "seed": seed}
    with open(os.path.join(d, ".hydra", "overrides.yaml"), "w") as f:
        yaml.safe_dump(overrides, f)
    with open(os.path.join(d, ".hydra", "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    if failure is not None:
        with open(os.path.join(d, "job_failure.json"), "w") as f:
            json.dump({"status": "failed", "error": failure}, f)
    if not write_results:
        return d
    cost = cost_report(SPECS, layer, size, bits, 12, 2, 16, load_target("vega"), 8)
    res = {"config": config, "status": status, "accuracy_per_event": list(acc), "memory_bytes": cost["memory_bytes"],
           "wall_time_s": 1.5}
    if status == "completed":
        res.update(final_accuracy=acc[-1], average_accuracy=sum(acc) / len(acc),
                   forgetting={"per_class": 0.1, "per_session": 0.05}, cost=cost,
                   latent={"layer": layer, "lr_bits": bits}, buffer={"size": size})
    else:
        res["error"] = error
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(res, f)
    return d


@pytest.fixture
def fake_sweep(tmp_path):
    """7 members: 2 configs x 2 seeds completed (U8 and FP32 latents at l=23, N=40), a U6 member that failed
    mid-run, one that raised before results.json (job_failure.json), and one killed (nothing written)."""
    root = str(tmp_path / "sweep")
    write_member(root, 0, bits=8, seed=0, acc=(0.2, 0.4, 0.50))
    write_member(root, 1, bits=8, seed=1, acc=(0.2, 0.4, 0.60))
    write_member(root, 2, bits=None, seed=0, acc=(0.3, 0.5, 0.70))
    write_member(root, 3, bits=None, seed=1, acc=(0.3, 0.5, 0.80))
    write_member(root, 4, bits=6, seed=0, acc=(0.1,), status="failed", error="FloatingPointError: NaN loss")
    write_member(root, 5, bits=6, seed=1, write_results=False, failure="ValueError: bad data")
    write_member(root, 6, bits=7, seed=0, write_results=False)
    with open(os.path.join(root, "multirun.yaml"), "w") as f:
        f.write("hydra: {}\n")
    return root
