"""Triplet-center loss (He et al., CVPR 2018, Eq. 3) against a slow reference from the definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from pytorch_metric_learning.distances import CosineSimilarity

from ranking_reg.losses import PMLRegularizer, TripletCenterLoss
from ranking_reg.utils.errors import ConfigError
from ranking_reg.utils.hydra_utils import build


def reference_triplet_center(f, labels, centers, margin, similarity=False):
    """(1/M) Σ_i max(D(f_i, c_{y_i}) + m - min_{j≠y_i} D(f_i, c_j), 0), loops over samples and
    classes; D = squared Euclidean distance. ``similarity``: D = cosine similarity, for which the
    nearest other centre is the most similar one and the hinge is s_nearest - s_own + m."""
    total = 0.0
    for i in range(f.shape[0]):
        own = int(labels[i])

        def d(j, i=i):
            if similarity:
                return F.cosine_similarity(f[i], centers[j], dim=0)
            return ((f[i] - centers[j]) ** 2).sum()

        others = [d(j) for j in range(centers.shape[0]) if j != own]
        nearest = max(others) if similarity else min(others)
        gap = nearest - d(own) if similarity else d(own) - nearest
        total = total + torch.clamp(gap + margin, min=0.0)
    return total / f.shape[0]


def _inputs(seed, m=12, c=5, dim=6, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(m, dim, generator=generator, dtype=dtype), dim=1)
    labels = torch.randint(0, c, (m,), generator=generator)
    centers = 0.5 * torch.randn(c, dim, generator=generator, dtype=dtype)
    return f, labels, centers


@pytest.mark.parametrize("seed, margin", [(0, 0.2), (1, 1.0), (2, 0.0), (3, 3.0)])
def test_values_and_gradients_equal_the_definition(seed, margin):
    f, labels, centers = _inputs(seed)
    loss_fn = TripletCenterLoss(num_classes=5, embedding_size=6, margin=margin).double()
    with torch.no_grad():
        loss_fn.centers.copy_(centers)
    x = f.clone().requires_grad_(True)
    fast = loss_fn(x, labels)
    fast.backward()
    xr, cr = f.clone().requires_grad_(True), centers.clone().requires_grad_(True)
    slow = reference_triplet_center(xr, labels, cr, margin)
    slow.backward()
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(x.grad, xr.grad, atol=1e-10)
    assert torch.allclose(loss_fn.centers.grad, cr.grad, atol=1e-10)
    if margin == 3.0:  # every hinge active: the loss is positive and every centre involved
        assert fast.item() > 0 and torch.count_nonzero(cr.grad.abs().sum(1)) == 5


def test_a_similarity_flips_the_hinge_like_pml_losses():
    f, labels, centers = _inputs(7)
    loss_fn = TripletCenterLoss(5, 6, margin=0.3, distance=CosineSimilarity()).double()
    with torch.no_grad():
        loss_fn.centers.copy_(centers)
    cr = centers.clone().requires_grad_(True)
    slow = reference_triplet_center(f, labels, cr, 0.3, similarity=True)
    slow.backward()
    fast = loss_fn(f, labels)
    fast.backward()
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9)
    assert torch.allclose(loss_fn.centers.grad, cr.grad, atol=1e-10)


def test_the_preset_builds_learned_centres_in_the_regularizer(tmp_path):
    cfg = compose_config(["regularizer=triplet_center"], output_dir=tmp_path)
    cfg.model.net.num_classes = 10
    reg = build(cfg.model.regularizer, "regularizer")
    assert isinstance(reg, PMLRegularizer) and reg.name == "triplet_center"
    loss = reg.base_loss
    assert isinstance(loss, TripletCenterLoss) and loss.margin == 0.2
    assert reg.loss_parameters() == [loss.centers] and loss.centers.shape == (10, 256)
    # N(0, 1/d): centres on the scale of the unit embeddings
    assert loss.centers.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.15)
    assert reg.weight == 1.0 and reg.param_lr_scale == 100.0


def test_bad_arguments_and_labels_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        TripletCenterLoss(num_classes=1, embedding_size=4)
    with pytest.raises(ConfigError, match="margin=-1"):
        TripletCenterLoss(num_classes=3, embedding_size=4, margin=-1)
    loss = TripletCenterLoss(num_classes=3, embedding_size=4)
    with pytest.raises(ConfigError, match=r"labels in \[0, 3\].*num_classes=3"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
