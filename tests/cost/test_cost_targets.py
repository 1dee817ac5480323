"""Targets as YAML: the shipped files carry the paper's numbers; a new target is one file; bad files fail."""

import dataclasses

import pytest
import yaml

from clq.cost import TIERS, available_targets, cost_report, load_target
from clq.cost.targets import TARGET_DIR


def test_shipped_targets():
    assert {"vega", "stm32l4"} <= set(available_targets())
    for name in available_targets():
        t = load_target(name)
        assert t.name == name and set(t.memory_bytes) == set(TIERS)


def test_vega_numbers_are_the_papers(vega):
    # paper.md §6
    assert vega.clock_hz == 375e6 and vega.power_w == 0.062 and vega.compute_cores == 8
    assert vega.memory_bytes["l1"] == 128 * 1024 and vega.memory_bytes["nvm"] == 4 * 1024 * 1024
    assert vega.memory_bytes["l2"] == 1536 * 1024 + 64 * 1024
    assert vega.bw_l2_l1 == 8.0 and vega.tiling_overhead == 0.07
    assert vega.kernel_l1_bytes == (128 * 1024, 256 * 1024, 512 * 1024)
    assert vega.kernel_macs_per_cycle["pw"]["backward_gradient"] == (0.94, 0.98, 0.97)
    assert vega.kernel_macs_per_cycle["dw"]["backward_error"] == (0.23, 0.25, 0.26)
    assert vega.kernel_macs_per_cycle["linear"]["forward"] == (1.46, 1.54, 1.56)


def test_stm32l4_is_derived_from_vega_by_the_papers_ratios(vega, stm32l4):
    # paper.md §7: 80 MHz, 35 mW, 96 kB SRAM; rates = VEGA 128 kB / 7.2 (8-core speed-up) * 4/9 (instr/MAC).
    assert stm32l4.clock_hz == 80e6 and stm32l4.power_w == 0.035 and stm32l4.memory_bytes["l2"] == 96 * 1024
    assert stm32l4.l1_bytes == 0 and stm32l4.with_l1(256 * 1024).l1_bytes == 0
    for kind in ("pw", "dw", "linear"):
        for p, vals in stm32l4.kernel_macs_per_cycle[kind].items():
            assert vals[0] == pytest.approx(vega.kernel_macs_per_cycle[kind][p][0] / 7.2 * 4 / 9, rel=1e-3)


def test_a_new_target_is_one_yaml_file(tmp_path, specs):
    d = yaml.safe_load((TARGET_DIR / "vega.yaml").read_text())
    d.update(name="vega2x", clock_hz=750_000_000)
    path = tmp_path / "vega2x.yaml"
    path.write_text(yaml.safe_dump(d))
    fast = load_target(str(path))
    assert fast.name == "vega2x" and fast.clock_hz == 750e6
    args = dict(latent_layer=27, buffer_size=1500, lr_bits=8, new_images=300, epochs=4, batch_size=128)
    base = cost_report(specs, target="vega", **args)
    rep = cost_report(specs, target=fast, **args)
    assert rep["latency_s"]["adaptive"] == pytest.approx(base["latency_s"]["adaptive"] / 2)


def test_unknown_target_lists_the_choices():
    with pytest.raises(ValueError, match=r"target must be one of \[.*'vega'.*\]"):
        load_target("gap42")


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("clock_hz"), "clock_hz"),
    (lambda d: d.__setitem__("power_w", -1), "power_w"),
    (lambda d: d["memory_bytes"].pop("nvm"), "memory_bytes"),
    (lambda d: d["kernel_macs_per_cycle"]["pw"].__setitem__("forward", [1.0]), "kernel_macs_per_cycle.pw.forward"),
    (lambda d: d["bandwidth_bytes_per_cycle"].pop("ext"), "bandwidth_bytes_per_cycle.ext"),
    (lambda d: d.__setitem__("samples_per_pass", 0), "samples_per_pass"),
])
def test_bad_target_file_names_the_field(tmp_path, edit, field):
    d = yaml.safe_load((TARGET_DIR / "vega.yaml").read_text())
    edit(d)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_target(str(path))


def test_target_is_immutable(vega):
    with pytest.raises(dataclasses.FrozenInstanceError):
        vega.clock_hz = 1.0
