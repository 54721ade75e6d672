"""Tests for ranking_reg.losses: the fast losses against slow loop references of the definitions."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch.utils._python_dispatch import TorchDispatchMode

from ranking_reg.losses import (
    CenterLoss,
    SemiHardMiner,
    batch_hard_triplet_indices,
    batch_hard_triplet_loss,
    pairwise_squared_distances,
    semihard_triplet_indices,
    semihard_triplet_loss,
)
from ranking_reg.losses import triplet as losses
from ranking_reg.utils.errors import ConfigError

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- references
def _sqdist(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return ((x[i] - x[j]) ** 2).sum()


def _sqdist_table(x: torch.Tensor) -> list[list[float]]:
    """``||x_i - x_j||²`` as plain Python floats, summed coordinate by coordinate."""
    rows = x.detach().double().tolist()
    return [[sum((u - v) ** 2 for u, v in zip(r, s, strict=True)) for s in rows] for r in rows]


def ref_semihard(x: torch.Tensor, labels: list[int], margin: float):
    """Plain loops over the definition (FaceNet rule as TF's triplet_semihard_loss)."""
    d = _sqdist_table(x)
    terms, triplets = [], []
    n_items = len(labels)
    for a in range(n_items):
        for p in range(n_items):
            if p == a or labels[p] != labels[a]:
                continue
            best, best_d, far, far_d = None, math.inf, None, -math.inf
            for n in range(n_items):
                if labels[n] == labels[a]:
                    continue
                if d[a][p] < d[a][n] < best_d:
                    best, best_d = n, d[a][n]
                if d[a][n] > far_d:
                    far, far_d = n, d[a][n]
            if far is None:  # no negative at all
                continue
            n = best if best is not None else far
            triplets.append((a, p, n))
            terms.append(torch.clamp(_sqdist(x, a, p) - _sqdist(x, a, n) + margin, min=0))
    return terms, triplets


def ref_batch_hard(x: torch.Tensor, labels: list[int], margin):
    """Hermans et al.'s batch-hard rule in loops; returns (terms, triplets)."""
    d = _sqdist_table(x)
    terms, triplets = [], []
    n_items = len(labels)
    for a in range(n_items):
        pos = [p for p in range(n_items) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(n_items) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        p = max(pos, key=lambda j: (d[a][j], -j))
        n = min(neg, key=lambda j: (d[a][j], j))
        triplets.append((a, p, n))
        diff = _sqdist(x, a, p) - _sqdist(x, a, n)
        terms.append(
            torch.nn.functional.softplus(diff)
            if margin == "soft"
            else torch.clamp(diff + margin, min=0)
        )
    return terms, triplets


def _batches():
    """(name, embeddings float64, labels) covering the edge cases of the brief."""
    g = torch.Generator().manual_seed(0)
    out = []
    # P×K batch, K = 4, large/negative label values, L2-normalised.
    labels = torch.arange(16).repeat_interleave(4) * 1000 - 3
    out.append(
        (
            "pk64",
            torch.nn.functional.normalize(
                torch.randn(64, 8, generator=g, dtype=torch.float64), dim=1
            ),
            labels,
        )
    )
    # Labels drawn from [-3, 7, 1000] plus singleton classes.
    labels = torch.tensor([-3, 7, 1000])[torch.randint(0, 3, (30,), generator=g)]
    labels = torch.cat([labels, torch.tensor([5, 11, -99])])
    out.append(("sparse", torch.randn(33, 5, generator=g, dtype=torch.float64), labels))
    # Ties: integer grid points with many duplicates (exact arithmetic in float64).
    grid = torch.randint(-1, 2, (48, 3), generator=g).to(torch.float64)
    out.append(("ties", grid, torch.randint(0, 5, (48,), generator=g)))
    # One-sample classes only except one pair.
    out.append(
        (
            "one_pair",
            torch.randn(10, 4, generator=g, dtype=torch.float64),
            torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
        )
    )
    return out


# ----------------------------------------------------------------------------- distances
def test_pairwise_squared_distances_matches_cdist_and_has_exact_zero_diagonal():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 7, generator=g, dtype=torch.float64)
    x[5] = x[3]  # a duplicate: its distance may round below 0 and must be clamped
    d = pairwise_squared_distances(x)
    torch.testing.assert_close(d, torch.cdist(x, x) ** 2, atol=1e-10, rtol=1e-10)
    assert torch.all(torch.diagonal(d) == 0)
    assert torch.all(d >= 0)
    assert d[3, 5].item() < 1e-12
    leaf = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_squared_distances, (leaf,))


# ----------------------------------------------------------------------------- semi-hard
@pytest.mark.parametrize("case", _batches(), ids=lambda c: c[0])
def test_semihard_matches_loop_reference_values_gradients_and_triplets(case):
    _, emb, labels = case
    margin = 0.2 if case[0] != "ties" else 1.5  # a larger margin makes grid hinges active
    x_ref = emb.clone().requires_grad_(True)
    terms, triplets = ref_semihard(x_ref, labels.tolist(), margin)
    assert terms, "fixture must contain anchor-positive pairs"
    ref = torch.stack(terms).mean()
    ref.backward()

    x = emb.clone().requires_grad_(True)
    loss = semihard_triplet_loss(x, labels, margin=margin)
    loss.backward()

    a, p, n = semihard_triplet_indices(emb, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == triplets
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-10)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=1e-10)
    # "none" and "sum" are the same terms.
    per_pair = semihard_triplet_loss(emb, labels, margin=margin, reduction="none")
    torch.testing.assert_close(per_pair, torch.stack(terms).detach())
    torch.testing.assert_close(
        semihard_triplet_loss(emb, labels, margin=margin, reduction="sum"),
        ref.detach() * len(terms),
    )


def test_semihard_ties_exercise_both_branches():
    # Guard that the tie fixture really hits the fallback (farthest negative) and the
    # semi-hard branch, so the reference comparison above covers both.
    _, emb, labels = _batches()[2]
    d = _sqdist_table(emb)
    _, triplets = ref_semihard(emb, labels.tolist(), 1.5)
    semihard = [d[a][n] > d[a][p] for a, p, n in triplets]
    assert any(semihard) and not all(semihard)


@pytest.mark.parametrize("fn", [semihard_triplet_loss, batch_hard_triplet_loss])
@pytest.mark.parametrize(
    "labels", [torch.zeros(6, dtype=torch.long), torch.arange(6) * 7 - 20], ids=["same", "distinct"]
)
def test_degenerate_batches_give_connected_zero(fn, labels):
    x = torch.randn(6, 4, requires_grad=True)
    loss = fn(x, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    none = fn(x, labels, reduction="none")
    assert none.shape == (0,) and none.requires_grad


def test_semihard_bf16_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1).to(torch.bfloat16)
    labels = torch.arange(8).repeat_interleave(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = semihard_triplet_loss(emb, labels)
        hard = batch_hard_triplet_loss(emb, labels)
    assert loss.dtype == hard.dtype == torch.float32
    # The bf16 values themselves are exact in float64: the loop references on them are the
    # truth, and bf16 arithmetic (~3 significant digits) would miss them by far more than 1e-5.
    exact = emb.double()
    semihard_terms, _ = ref_semihard(exact, labels.tolist(), 0.2)
    hard_terms, _ = ref_batch_hard(exact, labels.tolist(), 0.2)
    torch.testing.assert_close(loss.double(), torch.stack(semihard_terms).mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(hard.double(), torch.stack(hard_terms).mean(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- batch-hard
@pytest.mark.parametrize("margin", [0.2, "soft"])
@pytest.mark.parametrize("case", _batches(), ids=lambda c: c[0])
def test_batch_hard_matches_loop_reference(case, margin):
    _, emb, labels = case
    x_ref = emb.clone().requires_grad_(True)
    terms, triplets = ref_batch_hard(x_ref, labels.tolist(), margin)
    ref = torch.stack(terms).mean()
    ref.backward()
    x = emb.clone().requires_grad_(True)
    loss = batch_hard_triplet_loss(x, labels, margin=margin)
    loss.backward()
    a, p, n = batch_hard_triplet_indices(emb, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == triplets
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=1e-10)


def test_batch_hard_soft_margin_value_by_hand():
    # 1-D points: class 0 at 0 and 1, class 1 at 3. Anchor 0: p*=1 (d=1), n*=2 (d=9);
    # anchor 1: p*=0 (d=1), n*=2 (d=4); anchor 2 has no positive.
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    expected = (math.log1p(math.exp(1 - 9)) + math.log1p(math.exp(1 - 4))) / 2
    assert batch_hard_triplet_loss(x, labels, margin="soft").item() == pytest.approx(expected)
    assert batch_hard_triplet_loss(x, labels, margin=0.2).item() == pytest.approx(0.0)
    assert batch_hard_triplet_loss(x, labels, margin=3.5).item() == pytest.approx(0.5 / 2)


# ----------------------------------------------------------------------------- PML miner
def test_miner_with_pml_loss_equals_functional():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(48, 12, generator=g).requires_grad_(True)
    labels = torch.randint(0, 9, (48,), generator=g) * 13 - 40
    miner = SemiHardMiner()
    loss_fn = TripletMarginLoss(
        margin=0.2, distance=LpDistance(normalize_embeddings=False, power=2), reducer=MeanReducer()
    )
    pml = loss_fn(emb, labels, miner(emb, labels))
    ours = semihard_triplet_loss(emb, labels)
    torch.testing.assert_close(pml, ours, atol=1e-5, rtol=1e-5)
    g_pml = torch.autograd.grad(pml, emb)[0]
    g_ours = torch.autograd.grad(ours, emb)[0]
    torch.testing.assert_close(g_pml, g_ours, atol=1e-5, rtol=1e-4)
    assert miner.num_triplets == int((labels[:, None] == labels[None]).sum()) - 48

    # PML's default reducer averages only the non-zero terms: a different number.
    default = TripletMarginLoss(
        margin=0.2, distance=LpDistance(normalize_embeddings=False, power=2)
    )
    per_pair = semihard_triplet_loss(emb, labels, reduction="none")
    nonzero_mean = per_pair[per_pair > 0].mean()
    torch.testing.assert_close(default(emb, labels, miner(emb, labels)), nonzero_mean)
    assert not torch.isclose(nonzero_mean, ours)


def test_miner_refuses_distance_and_ref_emb():
    with pytest.raises(ConfigError, match="distance"):
        SemiHardMiner(distance=LpDistance())
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="ref_emb"):
        SemiHardMiner()(
            x, torch.tensor([0, 0, 1, 1]), ref_emb=x.clone(), ref_labels=torch.tensor([0, 0, 1, 1])
        )


def test_bad_options_are_config_errors():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="reduction"):
        semihard_triplet_loss(x, y, reduction="avg")
    with pytest.raises(ConfigError, match="regularizer.margin"):
        semihard_triplet_loss(x, y, margin="soft")
    with pytest.raises(ConfigError, match="regularizer.margin"):
        batch_hard_triplet_loss(x, y, margin="hard")


# ----------------------------------------------------------------------------- memory
class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any ATen op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_semihard_never_allocates_cubic_memory():
    batch = 512
    labels = torch.arange(batch // 4).repeat_interleave(4)
    # The probe catches a B×B×B construction (PML's all-triplets enumeration) ...
    with _MaxNumel() as probe:
        lmu.get_all_triplets_indices(labels[:64])
    assert probe.max_numel >= 64**3
    # ... and our loss, forward and backward, stays far below B³ (= 134M elements here).
    x = torch.nn.functional.normalize(torch.randn(batch, 32), dim=1).requires_grad_(True)
    with _MaxNumel() as probe:
        semihard_triplet_loss(x, labels).backward()
        batch_hard_triplet_loss(x, labels).backward()
    assert probe.max_numel <= max(4 * batch * batch, 1 << 22) < batch**3 // 16


# ----------------------------------------------------------------------------- center loss
def test_center_loss_value_gradient_and_update_by_hand():
    loss_fn = CenterLoss(num_classes=2, embedding_dim=2, alpha=0.5)
    loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = loss_fn(x, y)  # 1/2 (1 + 9 + 4) with the pre-update centres
    assert loss.item() == pytest.approx(7.0)
    loss.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]))
    # class 0: Δ = ((0-1) + (0-3), 0) / (1+2) -> c0 = 0 - 0.5 Δ = (2/3, 0)
    # class 1: Δ = ((1-1), (1-3)) / (1+1) = (0, -1) -> c1 = (1, 1.5)
    torch.testing.assert_close(loss_fn.centers, torch.tensor([[2 / 3, 0.0], [1.0, 1.5]]))
    assert loss_fn.centers.grad is None and "centers" in loss_fn.state_dict()

    mean_fn = CenterLoss(2, 2, reduction="mean")
    mean_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert mean_fn(x, y, update=False).item() == pytest.approx(7.0 / 3)
    torch.testing.assert_close(mean_fn.centers, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def ref_center_update(centers: torch.Tensor, x: torch.Tensor, y: list[int], alpha: float):
    """Wen et al. (ECCV 2016) Eq. 4 in loops: c_j -= alpha * sum_{y_i = j}(c_j - x_i) / (1 + n_j)."""
    out = centers.double().clone()
    for j in range(centers.shape[0]):
        members = [i for i, label in enumerate(y) if label == j]
        delta = torch.zeros(centers.shape[1], dtype=torch.float64)
        for i in members:
            delta += centers[j].double() - x[i].double()
        out[j] -= alpha * delta / (1 + len(members))
    return out


def test_center_loss_updates_only_in_training_and_update_centers_matches_forward():
    torch.manual_seed(0)
    a, b = CenterLoss(5, 3), CenterLoss(5, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(12, 3)
    y = torch.tensor([0, 1, 1, 3, 3, 3, 0, 1, 3, 0, 0, 3])  # class 2 and 4 absent: unchanged
    before = a.centers.clone()
    a.eval()
    a(x, y)
    assert torch.equal(a.centers, before)
    a.train()
    a(x, y)
    expected = ref_center_update(before, x, y.tolist(), alpha=0.5)
    torch.testing.assert_close(a.centers.double(), expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(a.centers[[2, 4]], before[[2, 4]])
    b.update_centers(x, y)  # the DDP path: forward(update=False) + an explicit update
    torch.testing.assert_close(b.centers.double(), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="num_classes"):
        a(x, torch.full((12,), 5))
    with pytest.raises(ConfigError, match="embedding_dim"):
        a(torch.randn(12, 4), y)


@pytest.mark.parametrize("case", _batches()[:3], ids=lambda c: c[0])
def test_semihard_blocking_does_not_change_the_selection(case, monkeypatch):
    # Tiny blocks (3 rows) cross block boundaries inside every slot, full or gathered.
    _, emb, labels = case
    _, expected = ref_semihard(emb, labels.tolist(), 0.2)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 3 * emb.shape[0])
    a, p, n = semihard_triplet_indices(emb, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected
