"""`longcot report` and curves.png for the mismatch / MoE / MuonClip metrics, on a constructed run directory."""

import json

from longcot.report import plot_curves, render


def write_run(tmp_path, with_moe: bool):
    rows = []
    for step in range(3):
        r = {"step": step, "reward_mean": 0.1 * step, "accuracy": 0.1 * step, "response_len_mean": 20.0,
             "step_seconds": 1.0, "time/generate": 1.0}
        if with_moe:
            r.update({"logprob_gap": 0.001 * (step + 1), "mismatch/gap_max": [0.1, 11.7, 0.3][step],
                      "mismatch/kl_k3": 1e-5, "mismatch/frac_gap_gt_0.1": 0.0, "routing/agreement": 0.99,
                      "routing/agreement/l0": 0.98, "routing/agreement/l1": 1.0, "moe/load_entropy/l0": 0.9,
                      "moe/load_entropy/l1": 0.8, "moe/load_entropy": 0.85, "qk_clip/max_logit": 10.0 + step})
        rows.append(r)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_report_summarises_mismatch_routing_and_load_per_layer(tmp_path):
    out = render(write_run(tmp_path, with_moe=True))
    lines = out.splitlines()
    assert "mismatch / MoE:             mean       last  (steps)" in lines
    gap_max = next(line for line in lines if line.strip().startswith("mismatch/gap_max"))
    assert gap_max.split()[1:] == ["4.033", "0.3", "(3)"]  # mean of 0.1, 11.7, 0.3; last 0.3
    assert "  layer 0: agreement 0.9800, load entropy 0.9000" in lines
    assert "  layer 1: agreement 1.0000, load entropy 0.8000" in lines
    assert any(line.strip().startswith("qk_clip/max_logit") and line.split()[1] == "11" for line in lines)


def test_report_of_a_run_without_them_has_no_section(tmp_path):
    assert "mismatch / MoE" not in render(write_run(tmp_path, with_moe=False))


def test_curves_add_panels_for_the_logged_metrics(tmp_path):
    """3 base panels + 4 logged extras (gap mean, gap max, agreement, max logit) on a 3-column grid."""
    run = write_run(tmp_path, with_moe=True)
    png = plot_curves(run / "metrics.jsonl", run / "curves.png")
    assert png is not None and png.stat().st_size > 1000
