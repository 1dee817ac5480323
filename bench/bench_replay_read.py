"""Reading a replay mini-batch from the bit-packed buffer vs from unpacked codes, side by side.

    .venv/bin/python bench/bench_replay_read.py         # ~1 min on the 2-core machine; writes bench/results/replay_read.json

A learning event reads ``replays_per_batch`` latents from the buffer at every SGD step (`ReplayBuffer.read`
inside the compiled step), so unpacking must stay cheap. For each latent shape (the paper's l = 19 of
MobileNet-V1 1.0 / 128 px, 8x8x512, and the default experiment's, 2x2x256) and Q_LR, one jitted call gathers
107 random slots of a full buffer of 1500 and decodes them to float32 (summed, so that the output is not what
is timed):

* ``packed``: `clq.replay.make_replay_buffer(...).read`: gather uint32 words, unpack, decode;
* ``unpacked``: the storage before packing: gather uint8/uint16 codes (one per element), decode.

Both decode the same codes to the same floats. Reported: best and median microseconds of each over --repeats
calls, interleaved, and the ratio packed / unpacked of the best times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import best_and_median, machine, write_result  # noqa: E402
from clq.quant import make_latent_codec  # noqa: E402
from clq.replay import make_replay_buffer  # noqa: E402

SHAPES = {"paper l=19 (8x8x512)": (8, 8, 512), "default l=19 (2x2x256)": (2, 2, 256)}


def measure(shape, bits: int, size: int, batch: int, repeats: int) -> dict:
    """Best/median seconds of a jitted read of `batch` slots, packed buffer vs unpacked codes."""
    codec = make_latent_codec(bits, 6.0)
    buf = make_replay_buffer(size, shape, codec, "ar1", size)
    x = jnp.asarray(np.random.default_rng(bits).uniform(0, 6, (size, *shape)).astype(np.float32))
    # Label = row, so that the unpacked codes can be laid out in the buffer's slot order.
    state = jax.jit(buf.add)(buf.init(), x, jnp.arange(size, dtype=jnp.int32), jnp.ones(size, bool),
                             jax.random.PRNGKey(0))
    codes = codec.encode(x)[state.labels]

    def slots(k):
        return jax.random.randint(k, (batch,), 0, size)

    fns = {"packed": (jax.jit(lambda s, k: buf.read(s, slots(k))[0].sum()), state),
           "unpacked": (jax.jit(lambda c, k: codec.decode(c[slots(k)]).sum()), codes)}
    some = slots(jax.random.PRNGKey(1))  # the same latents, decoded to the same floats
    assert np.array_equal(np.asarray(buf.read(state, some)[0]), np.asarray(codec.decode(codes[some])))
    times = {k: [] for k in fns}
    for r in range(repeats):
        for name, (f, arg) in fns.items():
            t0 = time.perf_counter()
            f(arg, jax.random.PRNGKey(r)).block_until_ready()
            times[name].append(time.perf_counter() - t0)
    out = {k: best_and_median(v) for k, v in times.items()}
    out["ratio_best"] = out["packed"]["best"] / out["unpacked"]["best"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[1, 3, 4, 6, 7, 8, 12, 16])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--size", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=107)  # replays per mini-batch of the paper's event (21 + 107)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = {}
    for name, shape in SHAPES.items():
        rows[name] = {}
        for bits in args.bits:
            m = measure(shape, bits, args.size, args.batch, args.repeats)
            rows[name][bits] = m
            print(f"{name} Q={bits:2d}: packed {m['packed']['best'] * 1e6:7.1f} us, unpacked "
                  f"{m['unpacked']['best'] * 1e6:7.1f} us, ratio {m['ratio_best']:.2f}", file=sys.stderr)
    res = {"machine": machine(), "size": args.size, "batch": args.batch, "repeats": args.repeats, "read": rows}
    write_result("replay_read", res, args.out)
    return res


if __name__ == "__main__":
    main()
