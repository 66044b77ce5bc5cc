"""Model fingerprints sample weights at exact, in-range positions for tensors of any size."""

from __future__ import annotations

import pytest
import torch

from lens.io._fingerprint import SAMPLES, _sample, model_fingerprint


@pytest.mark.parametrize("n", [1, 2, SAMPLES - 1, SAMPLES, 2**24 + 1, 38_597_376])
def test_samples_are_evenly_spaced_and_end_at_the_last_element(n):
    # GPT-2's token embedding has 38,597,376 weights: a float32 linspace of positions
    # rounded its last index past the end of the tensor.
    t = torch.arange(n, dtype=torch.int64)
    got = torch.frombuffer(bytearray(_sample(t, {})), dtype=torch.int64)
    k = min(n, SAMPLES)
    want = [i * (n - 1) // max(k - 1, 1) for i in range(k)]
    assert got.tolist() == want


def test_tensors_of_one_size_share_an_index_and_each_gets_its_own_values():
    # The sample index is made once per size and device and reused (a model's blocks
    # repeat sizes): every tensor must still be sampled from its own values.
    picks: dict = {}
    a, b = torch.arange(1000, dtype=torch.int64), torch.arange(1000, 2000, dtype=torch.int64)
    got_a = torch.frombuffer(bytearray(_sample(a, picks)), dtype=torch.int64).tolist()
    got_b = torch.frombuffer(bytearray(_sample(b, picks)), dtype=torch.int64).tolist()
    want = [i * 999 // (SAMPLES - 1) for i in range(SAMPLES)]
    assert got_a == want and got_b == [1000 + w for w in want] and len(picks) == 1


def test_editing_one_sampled_weight_of_a_repeated_block_changes_the_fingerprint():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(40, 40) for _ in range(3)])
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model[2].weight.view(-1)[-1] += 1.0  # the last element is always sampled
    assert model_fingerprint(model) != before
