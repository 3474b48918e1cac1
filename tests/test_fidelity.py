"""milco-os vectors against the MILCO math computed in float64 (an independent implementation).

On a CPU in fp32, milco-os is within fp32 rounding of the exact math: weights that
matter (>= 0.1) agree to 1e-5 relative, every weight to 2e-6 absolute, batched and
padded as the encoder runs. Terms whose exact weight is within fp32 rounding of zero
(``log1p(relu(x))`` of a logit that is a small difference of large sums) can fall on
either side of zero in any fp32 computation; they are the only terms allowed on one
side only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_helpers import ReferenceMilco, make_tiny

from milco_os.encoders import SparseEncoder

TEXTS = [
    "Baltimore is the greatest city in America.",
    "Die Katze schläft auf dem Sofa.",
    "猫在沙发上睡觉。",
    "the the the city city",  # repeated tokens: echo weights are summed
    "Le monde est une ville, et la ville est le monde. " * 6,  # much longer: padding
]
RELATIVE = 1e-5
ABSOLUTE = 2e-6
WEIGHT_THAT_MATTERS = 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("fidelity") / "tiny")


def test_fp32_vectors_are_within_rounding_of_the_fp64_math(tiny):
    encoder = SparseEncoder.from_pretrained(tiny, device="cpu")
    exact = ReferenceMilco(tiny, dtype=torch.float64)
    vectors = encoder.encode(TEXTS, kind="document", batch_size=8)
    checked = 0
    for text, vector in zip(TEXTS, vectors, strict=True):
        pivot, echo = exact.dense(encoder.tokenize([text], 512)[0])
        for view, reference in (("pivot", pivot), ("echo", echo)):
            got = np.zeros_like(reference)
            got[getattr(vector, view).ids] = getattr(vector, view).weights
            gap = np.abs(got - reference)
            assert gap.max() <= ABSOLUTE, (text, view, gap.max())
            big = reference >= WEIGHT_THAT_MATTERS
            assert (gap[big] / reference[big]).max() <= RELATIVE, (text, view)
            one_side = (got > 0) != (reference > 0)
            assert (reference[one_side] <= ABSOLUTE).all(), (text, view)
            checked += int(big.sum())
    assert checked > 50  # the comparison saw real weights, not empty vectors
