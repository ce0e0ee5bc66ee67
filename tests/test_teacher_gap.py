"""scripts/teacher_gap.py: the paired-bootstrap gap, the sentences a target is short by, its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("teacher_gap")


def _pair(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    return a, b


def test_paired_gap_is_the_accuracy_difference_with_the_normal_approximations_width(script):
    a, b = _pair(42, 26, 709, 95)  # seed 0 of the main job: 872 sentences, 751 vs 735 right
    mean, low, high = script.paired_gap(a, b)
    assert mean == pytest.approx(100 * (751 - 735) / 872)
    d = a.astype(float) - b
    half_width = 100 * 1.96 * d.std() / np.sqrt(len(d))  # independent: the normal approximation
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert low < mean < high


def test_paired_gap_of_identical_predictions_is_zero_and_seeded(script):
    a, _ = _pair(10, 0, 50, 40)
    assert script.paired_gap(a, a) == (0.0, 0.0, 0.0)
    a, b = _pair(5, 9, 60, 26)
    assert script.paired_gap(a, b, seed=3) == script.paired_gap(a, b, seed=3)


def test_paired_gap_refuses_unequal_inputs(script):
    with pytest.raises(ValueError, match="a_right and b_right must be equal-length"):
        script.paired_gap(np.ones(5, bool), np.ones(4, bool))


@pytest.mark.parametrize(("model", "teacher", "n", "target", "short"), [
    (735, 751, 872, {"share": 0.985}, 5),    # 0.985 x 751 = 739.7: 740 needed
    (740, 751, 872, {"share": 0.985}, 0),
    (197, 200, 250, {"share": 0.985}, 0),    # exactly 98.5 %: met
    (196, 200, 250, {"share": 0.985}, 1),
    (740, 751, 872, {"points": 1.0}, 3),     # 751 - 8.72 = 742.3: 743 needed
    (743, 751, 872, {"points": 1.0}, 0),
])
def test_sentences_short_counts_against_a_loop(script, model, teacher, n, target, short):
    assert script.sentences_short(model, teacher, n, **target) == short
    share, points = target.get("share"), target.get("points")
    first_met = next(k for k in range(n + 1) if (model + k >= teacher * share - 1e-9 if share
                                                 else 100 * (teacher - model - k) / n <= points + 1e-9))
    assert first_met == short


def test_main_refuses_a_missing_or_unfinished_run(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "student").mkdir()
    assert script.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err


def test_unseen_is_refused_for_a_run_of_another_training_subset(script):
    run = {"task": "sst2", "config": {"train_limit": 512, "teacher_seed": 0, "max_length": 64}}
    with pytest.raises(ValueError, match=r"--unseen needs runs trained on the default preset's subset.*"
                                         r"train_limit 512.*drop --unseen"):
        script.unseen_data(run, tokenizer=None)


def test_gap_rows_print_the_shares_and_the_sentences_short(script):
    teacher, student = _pair(42, 26, 709, 95)  # 751 vs 735 right of 872
    rows = script.gap_rows({"teacher": teacher, "student": student}, np.zeros(872, int), "validation")
    assert rows[0] == "validation (872 sentences): teacher 0.8612 (751 right)"
    assert "only the teacher right  42, only it  26" in rows[1]
    assert rows[1].endswith("98.5% of the teacher: 5 sentence(s) short (kept 97.9%)")


def test_seeds_rows_report_means_and_the_paired_kd_minus_ce_interval(script):
    """The lr-1e-4 main-job runs of 2026-12-07, as their results.json files hold them."""
    def run(seed, kd, ce):
        return {"seed": seed, "teacher": {"accuracy": 751 / 872}, "student": {"accuracy": kd / 872},
                "baselines": {"ce_only": {"accuracy": ce / 872}}, "retention": kd / 751}

    rows = script.seeds_rows([run(0, 735, 732), run(1, 737, 735), run(2, 738, 735)])
    assert rows[0] == "seeds 0, 1, 2:"
    assert rows[2].split() == ["student,", "KD", "0.8429", "0.8452", "0.8463", "mean", "0.8448", "±", "0.0018"]
    assert rows[4].split()[1:4] == ["0.979", "0.981", "0.983"]
    d = np.array([3, 2, 3]) / 872 * 100
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df), independent of scipy
    assert rows[5].endswith(f"mean {d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] "
                            "(95 % paired t-interval)")
    assert "+0.34, +0.23, +0.34 points" in rows[5]
