"""The encoding thread policy: few threads for a query, all usable cores for a batch."""

from __future__ import annotations

import pytest
import torch

from milco_os.core import threads
from milco_os.core.errors import InputError


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv(threads.QUERY_ENV, raising=False)
    monkeypatch.delenv(threads.BATCH_ENV, raising=False)
    yield
    threads.configure()


def test_defaults_one_thread_for_a_query_all_cores_for_a_batch():
    assert threads.threads_for(1) == 1
    assert threads.threads_for(threads.LATENCY_MAX_TEXTS + 1) == threads.usable_cores()


def test_argument_beats_configure_beats_environment(monkeypatch):
    monkeypatch.setenv(threads.QUERY_ENV, "3")
    monkeypatch.setenv(threads.BATCH_ENV, "5")
    assert (threads.threads_for(1), threads.threads_for(100)) == (3, 5)
    threads.configure(query=2, batch=4)
    assert (threads.threads_for(1), threads.threads_for(100)) == (2, 4)
    assert threads.threads_for(1, explicit=6) == 6


@pytest.mark.parametrize("raw", ["0", "two", "-1"])
def test_bad_environment_value_is_an_input_error_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv(threads.QUERY_ENV, raw)
    with pytest.raises(InputError, match=threads.QUERY_ENV):
        threads.threads_for(1)


def test_bad_argument_is_an_input_error():
    with pytest.raises(InputError, match="threads"):
        threads.threads_for(1, explicit=0)
    with pytest.raises(InputError, match="batch threads"):
        threads.configure(batch=0)


def test_block_runs_on_the_chosen_count_and_restores_it():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with threads.torch_threads(other) as used:
        assert used == other == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_encoder_uses_the_policy(tmp_path, monkeypatch):
    from _model_helpers import make_tiny

    from milco_os.encoders import SparseEncoder

    encoder = SparseEncoder.from_pretrained(make_tiny(tmp_path), "cpu")
    seen = []
    real = encoder.forward

    def spy(input_ids, mask):
        seen.append(torch.get_num_threads())
        return real(input_ids, mask)

    monkeypatch.setattr(encoder, "forward", spy)
    threads.configure(query=1, batch=2)
    encoder.encode(["the city"])
    encoder.encode(["the city"] * 8, batch_size=4)
    encoder.encode(["the city"], threads=2)
    assert seen == [1, 2, 2, 2]
