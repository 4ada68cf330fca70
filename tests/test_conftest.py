"""conftest.py's rules hold: a missing asset skips a marked test with the fetch command, an unmarked test never
reaches a download, and the tiny saved models load like checkpoints with their in-memory twins' weights."""
from __future__ import annotations

import pytest

import conftest
from petl import assets


class _Item:
    """The two things the setup hook reads of a test item."""

    def __init__(self, *names):
        self.nodeid = "tests/x.py::test_x"
        self._marks = [pytest.mark.needs_assets(*names).mark if names else pytest.mark.needs_assets.mark]

    def iter_markers(self, name):
        return iter(self._marks if name == "needs_assets" else [])


def test_a_missing_asset_skips_the_test_naming_the_fetch_command(monkeypatch):
    monkeypatch.setattr(conftest, "_state", {name: "present" for name in assets.ASSETS})
    monkeypatch.setitem(conftest._state, "bigbench", "missing")
    monkeypatch.setitem(conftest._state, "ro-l10n-bash", "damaged")
    conftest.pytest_runtest_setup(_Item("minilm"))                              # present: runs
    with pytest.raises(pytest.skip.Exception, match=r"\(bigbench missing\); fetch them with "
                                                    r"`python -m petl.assets fetch bigbench`"):
        conftest.pytest_runtest_setup(_Item("minilm", "bigbench"))
    with pytest.raises(pytest.skip.Exception, match=r"ro-l10n: 1 of its 12 not present.*fetch ro-l10n`"):
        conftest.pytest_runtest_setup(_Item("ro-l10n"))
    with pytest.raises(pytest.UsageError, match="needs_assets takes the asset names"):
        conftest.pytest_runtest_setup(_Item())                                  # the bare marker


def test_an_unmarked_test_asking_for_a_real_asset_fails_instead_of_fetching_it(monkeypatch):
    fetched = []
    monkeypatch.setattr(assets, "_install", lambda asset, target: fetched.append(asset.name))
    with pytest.raises(pytest.fail.Exception, match=r"mark it @pytest.mark.needs_assets\('bigbench'\)"):
        assets.ensure("bigbench")
    with pytest.raises(pytest.fail.Exception, match=r"needs_assets\('minilm'\)"):   # even when it is there
        assets.ensure("minilm")
    assert fetched == []


def test_the_saved_tiny_model_loads_as_a_checkpoint_with_the_in_memory_weights(tiny_dir):
    import torch

    from petl import models

    for arch, task in (("bert", "rt-polarity"), ("llama", "bbc-xsum")):
        model, tok = models.load_model(tiny_dir(arch), task)
        twin = conftest.tiny_model(arch)
        ours = dict(twin.base_model.named_parameters() if arch == "bert" else twin.named_parameters())
        theirs = dict(model.base_model.named_parameters() if arch == "bert" else model.named_parameters())
        assert set(ours) <= set(theirs)
        assert all(torch.equal(p, theirs[name]) for name, p in ours.items())
        assert len(tok) == conftest.VOCAB and tok.pad_token_id == conftest.PAD
        assert tok.convert_ids_to_tokens(tok("the film")["input_ids"])[-2:] == (
            ["the", "film"] if arch == "llama" else ["film", "[SEP]"])
