"""Numbers in the course's prose come from stored outputs (kd_lib.course.claims)."""

from __future__ import annotations

import json

import pytest

from kd_lib.course.claims import claims_in, course_sources, unsupported_claims


def test_claims_are_measurements_not_counts_code_or_math():
    text = (
        "KD reached 84.3 % and was 2.3× faster, +1.2 ± 0.4 points over 3 seeds and 6 layers.\n"
        "Install `torch 2.13.0`; the loss is $T^2 = 4.0$; see section 4.2.\n"
        "Hinton et al. (2015) report 0.61 on their task."
    )
    claims = claims_in(text, "x")
    assert [(c.text, c.value, c.decimals, c.percent) for c in claims] == [
        ("84.3 %", 84.3, 1, True),
        ("2.3×", 2.3, 1, False),
        ("1.2", 1.2, 1, True),  # a bare number in a sentence about points
        ("± 0.4 points", 0.4, 1, True),
    ]


def _notebook(tmp_path, markdown: str, printed: str):
    cells = [
        {"cell_type": "markdown", "source": [markdown], "metadata": {}},
        {
            "cell_type": "code",
            "source": ["print(acc)"],
            "metadata": {},
            "execution_count": 1,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": [printed]}],
        },
    ]
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    return path


@pytest.mark.parametrize(
    ("markdown", "printed", "unsupported"),
    [
        ("accuracy 84.3 %", "accuracy 0.8429", []),  # a fraction printed, a percentage written
        ("accuracy 84.3 %", "accuracy 84.26", []),  # rounded to the claim's one decimal
        ("accuracy 84.3 %", "accuracy 0.8449", ["84.3 %"]),  # 84.5 % is not 84.3 %
        ("2.3× faster", "speed-up 2.27", []),
        ("2.3× faster", "speed-up 0.023", ["2.3×"]),  # a ratio is not scaled like a percentage
        ("perplexity 124.6", "perplexity 115.6", ["124.6"]),
        ("the 11.7 M-parameter table", "word embeddings 11,720,448", []),  # millions written, a count printed
        ("the 11.7 M-parameter table", "word embeddings 11,920,448", ["11.7 M"]),
        ("about 11.7 times", "ratio 11,720,448", ["11.7"]),  # only an "M" claim is scaled by a million
        ("+3.0 points, interval [−2.8, +8.9]", "diff +0.030 [-0.028, +0.089]", []),  # endpoints in points
        ("ratio 2.8, interval [1.9, 3.1]", "ratio 0.028 [0.019, 0.031]", ["2.8", "1.9", "3.1"]),  # not percent
    ],
)
def test_a_claim_is_supported_only_by_a_matching_printed_number(tmp_path, markdown, printed, unsupported):
    path = _notebook(tmp_path, markdown, printed)
    assert [c.text for c in unsupported_claims(path, [path], root=tmp_path)] == unsupported


SOURCES = list(course_sources())


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_number_in_the_prose_is_printed_by_a_cell_or_cited(source):
    backing = course_sources()[source]
    bad = unsupported_claims(source, backing)
    lines = [f"{c.text!r} in: {c.sentence[:150]}" for c in bad]
    assert not bad, (
        f"{source.name}: numbers no stored output of {[p.name for p in backing]} prints, and no citation "
        "supports (print them in a cell, cite the paper, or remove them):\n  " + "\n  ".join(lines)
    )
