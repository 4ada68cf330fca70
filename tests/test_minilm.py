"""On the real MiniLM-L6 checkpoint (embedded asset): MAM learns, and Eq. 7 holds on a pretrained attention layer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import petl
import petl.inspect
from petl import assets

pytestmark = pytest.mark.needs_assets("minilm")

SENTENCES = [
    ("a gorgeous, witty, seductive movie.", 1), ("the acting is superb and the story moves you.", 1),
    ("one of the most delightful films of the year.", 1), ("a triumph of warm, funny storytelling.", 1),
    ("smart, sharp and beautifully made.", 1), ("i loved every minute of it.", 1),
    ("a tedious, lifeless mess.", 0), ("the plot is dull and the jokes fall flat.", 0),
    ("an embarrassing waste of a fine cast.", 0), ("boring, bloated and badly acted.", 0),
    ("i wanted to walk out after ten minutes.", 0), ("a clumsy film with nothing to say.", 0),
]


@pytest.fixture(scope="module")
def minilm():
    path = assets.ensure("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([y for _, y in SENTENCES])
    return path, batch


@pytest.mark.slow
def test_a_few_steps_of_mam_lower_the_loss(minilm):
    path, batch = minilm
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    petl.apply(model, "mam_glue")  # the released GLUE script's sizes
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(16):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_eq7_on_a_pretrained_attention_layer(minilm):
    """The gate recorded by petl.inspect equals Eq. 7's λ, and both prefix forms agree on real weights."""
    path, batch = minilm
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    concat = petl.apply(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), "prefix_nomlp",
                        attn_bn=8)
    gated = petl.apply(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), "prefix_nomlp",
                       attn_bn=8, attn_option="cross_attn_noln", attn_composition="gate_add")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in concat.petl.parameters():
            p.normal_(0, 1.0)
    gated.petl.load_state_dict(concat.petl.state_dict())
    gated.classifier.load_state_dict(concat.classifier.state_dict())
    concat.eval(), gated.eval()
    with torch.no_grad():
        torch.testing.assert_close(concat(**inputs).logits, gated(**inputs).logits, atol=1e-5, rtol=1e-4)
    lam = petl.inspect.gates(concat, **inputs)["prefix_encoder"]
    assert len(lam) == 6 and lam[0].shape == (len(SENTENCES), 12, inputs["input_ids"].shape[1])
    assert all(((g > 0) & (g < 1)).all() for g in lam.values())
    norms = petl.inspect.update_norms(concat)
    assert len(norms) == 6 and (norms["norm"] > 0).all()
