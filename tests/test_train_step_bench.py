"""CPU smoke run of ``benchmarks/train_step.py``: the reference step computes the engine's loss, and the
JSON report holds images/s for both variants and their ratio."""
from __future__ import annotations

import json
import math
from pathlib import Path

import train_step


def test_reference_matches_engine_and_report_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    # A step of 6/255 reaches the ε = 8/255 boundary within the two attack steps, so the projection counts.
    report = train_step.main(["--device", "cpu", "--student", "cnn", "--teacher-arch", "cnn", "--channels", "1",
                              "--image-size", "28", "--batch-sizes", "4", "--attack-steps", "2",
                              "--step-size", "6/255", "--warmup", "0", "--repeats", "1", "--amp", "off",
                              "--peak-size", "256", "--peak-repeats", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    (row,) = saved["results"]
    assert row["batch"] == 4
    ref, eng = row["reference"], row["engine"]
    # Same weights, BatchNorm buffers, batch and start noise: the losses agree term by term.
    assert saved["igdm_alpha"] > 0 and eng["first_step_terms"]["igdm"] > 0
    assert set(ref["first_step_terms"]) == set(eng["first_step_terms"]) == {"kl_adv", "kl_clean", "igdm"}
    for name, value in ref["first_step_terms"].items():
        assert math.isclose(eng["first_step_terms"][name], value, rel_tol=1e-4), name
    assert math.isclose(eng["first_step_loss"], ref["first_step_loss"], rel_tol=1e-4)
    assert row["first_step_loss_rel_diff"] <= 1e-4
    for variant in (ref, eng):
        assert variant["images_per_s"] > 0 and variant["flops_per_image"] > 0 and variant["mfu"] > 0
        assert len(variant["times_s"]) == 1
    # The reference runs one more student forward and backward (S(x + δ) besides S(x′)).
    assert ref["flops_per_image"] > eng["flops_per_image"]
    assert math.isclose(row["ratio"], eng["images_per_s"] / ref["images_per_s"])
    assert saved["peak_bf16_flops"] > 0 and saved["engine_ops_backend"]["requested"] in ("auto", "ext", "ref")
