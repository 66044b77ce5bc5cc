"""Model fingerprints sample weights at exact, in-range positions for tensors of any size."""

from __future__ import annotations

import pytest
import torch

from lens.io._fingerprint import SAMPLES, _sample


@pytest.mark.parametrize("n", [1, 2, SAMPLES - 1, SAMPLES, 2**24 + 1, 38_597_376])
def test_samples_are_evenly_spaced_and_end_at_the_last_element(n):
    # GPT-2's token embedding has 38,597,376 weights: a float32 linspace of positions
    # rounded its last index past the end of the tensor.
    t = torch.arange(n, dtype=torch.int64)
    got = torch.frombuffer(bytearray(_sample(t)), dtype=torch.int64)
    k = min(n, SAMPLES)
    want = [i * (n - 1) // max(k - 1, 1) for i in range(k)]
    assert got.tolist() == want
