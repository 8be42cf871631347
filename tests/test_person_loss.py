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
