"""The person-mask loss that keeps a person-aware encoder's silhouette trustworthy."""

from __future__ import annotations

import torch

from engines import build_model
from training.losses import IGNORE_INDEX, parsing_loss, person_mask_loss


def test_selfie_model_exposes_its_person_mask_in_training_only():
    model = build_model(task="parts", backbone="selfie", merge="attention")
    out = model.train()(torch.randn(1, 3, 64, 80))
    assert out["person_logits"].shape == (1, 1, 64, 80)
    assert "person_logits" not in model.eval()(torch.randn(1, 3, 64, 80))
    assert "person_logits" not in build_model(task="parts").train()(torch.randn(1, 3, 64, 64))


def test_person_loss_rewards_the_right_silhouette_and_skips_ignored_pixels():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 3
    right = torch.where(labels[:, None] > 0, 6.0, -6.0)
    assert person_mask_loss(right, labels, IGNORE_INDEX) < 0.01
    assert person_mask_loss(-right, labels, IGNORE_INDEX) > 5
    ignored = torch.full_like(labels, IGNORE_INDEX)
    assert person_mask_loss(-right, ignored, IGNORE_INDEX) == 0


def test_parsing_loss_adds_the_person_term_only_when_asked():
    model = build_model(task="parts", backbone="selfie", merge="attention").train()
    labels = torch.randint(0, 7, (2, 48, 48))
    out = model(torch.randn(2, 3, 48, 48))
    _, without = parsing_loss(out, labels)
    total, terms = parsing_loss(out, labels, person_weight=0.5)
    assert "person" not in without and terms["person"] > 0
    assert torch.isclose(total, torch.tensor(sum(terms.values())), rtol=1e-5)
    total.backward()
    grads = [p.grad for p in model.net.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_person_gate_factors_person_and_part_and_survives_a_checkpoint(tmp_path):
    from engines import load_checkpoint, save_checkpoint

    model = build_model(task="parts", backbone="selfie", merge="attention", person_gate=True).eval()
    x = torch.rand(1, 3, 65, 81)
    with torch.no_grad():
        out = model(x)
        person = torch.sigmoid(model.person_gate.person_logit(x))
    probabilities = out["log_probs"].exp()  # a gated model states that it answers in log-probabilities
    assert "logits" not in out and model.score_kind == "log_probs"
    assert out["log_probs"].shape == (1, 7, 65, 81)  # gated scores come at the input's size
    assert torch.allclose(probabilities.sum(1), torch.ones(1), atol=1e-5)
    assert torch.allclose(probabilities[:, 0], 1 - person[:, 0], atol=1e-5)
    assert not any(p.requires_grad for p in model.person_gate.parameters())  # frozen
    path = tmp_path / "gated.safetensors"
    save_checkpoint(path, model)
    loaded = load_checkpoint(path)
    assert loaded.metadata.model.person_gate and loaded.person_gate is not None
    with torch.no_grad():
        assert torch.equal(loaded(x)["log_probs"], out["log_probs"])
    assert model.train()(x)["logits"].shape[-2:] != (65, 81)  # training sees the ungated grid scores
