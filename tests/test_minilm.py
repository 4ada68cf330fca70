"""On the real MiniLM-L6 checkpoint (embedded asset): MAM learns, and Eq. 7 holds on a pretrained attention layer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import petl
import petl.inspect
from petl import assets
from petl.core import modules_of

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
    assert sorted(lam) == list(range(6))
    expected = _eq7_lambda(concat, inputs)
    for layer, gate in lam.items():
        assert gate.shape == (len(SENTENCES), 12, inputs["input_ids"].shape[1])
        torch.testing.assert_close(gate.double(), expected[layer], atol=1e-5, rtol=1e-4)
        assert 0.05 < gate.mean() < 0.95 and gate.std() > 0.01      # a gate that mixes, so the match means something
    norms = petl.inspect.update_norms(concat)                        # one row per layer: ‖(P_k, P_v)‖_F
    prefixes = modules_of(concat).deltas["prefix_encoder"].all_prefixes().detach()
    assert list(norms["site"]) == [f"prefix_encoder.layer{i}" for i in range(6)]
    assert norms["norm"].tolist() == pytest.approx([float(p.norm()) for p in prefixes], rel=1e-6)


def _eq7_lambda(model, inputs) -> dict[int, torch.Tensor]:
    """Eq. 7's gate from the layer's own weights, in float64, per layer: [batch, heads, query]

        λ(x) = Σ_i exp(x W_q P_kᵀ)_i / (Σ_i exp(x W_q P_kᵀ)_i + Σ_j exp(x W_q W_kᵀ Cᵀ)_j)

    with x, C the layer's input (BERT attends to itself), the logits scaled by 1/√d_head as the attention scales
    its own, and j over the keys the attention mask lets the query see."""
    group = modules_of(model).deltas["prefix_encoder"]
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states       # hidden[l]: the input of layer l
        visible = inputs["attention_mask"].double()[:, None, None, :]           # [batch, 1, 1, key]
        out = {}
        for layer, block in enumerate(model.bert.encoder.layer):
            attention = block.attention.self
            heads, d = model.config.num_attention_heads, attention.attention_head_size
            x = hidden[layer].double()

            def split(t):                                                       # [batch, n, heads·d] -> [batch, heads, n, d]
                return t.view(*t.shape[:2], heads, d).transpose(1, 2)

            q = split(x @ attention.query.weight.double().T + attention.query.bias.double())
            k = split(x @ attention.key.weight.double().T + attention.key.bias.double())
            p_k = group.compute_prefix(layer)[0].double()                      # [heads, l, d]
            prefix = torch.exp(q @ p_k.transpose(-1, -2) / d ** 0.5).sum(-1)
            own = (torch.exp(q @ k.transpose(-1, -2) / d ** 0.5) * visible).sum(-1)
            out[layer] = prefix / (prefix + own)
    return out
