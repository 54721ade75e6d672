"""The fast mining paths (integer-key semi-hard search, label-built pairs, hand-written backward)
against slow references written from the definitions, on tie-heavy batches of several sizes."""

from __future__ import annotations

import pytest
import torch

from ranking_reg.losses import (
    batch_hard_triplet_indices,
    batch_hard_triplet_loss,
    semihard_triplet_indices,
    semihard_triplet_loss,
)
from ranking_reg.losses import triplet as losses
from ranking_reg.losses import triplet_gap as triplet_gap_module

torch.set_num_threads(1)


def _table(x: torch.Tensor) -> list[list[float]]:
    """Squared distances as Python floats (exact for the small-integer grids used below)."""
    rows = x.detach().double().tolist()
    return [[sum((u - v) ** 2 for u, v in zip(r, s, strict=True)) for s in rows] for r in rows]


def ref_semihard_triplets(x: torch.Tensor, labels: list[int]) -> list[tuple[int, int, int]]:
    """TF's rule: per ordered pair (a, p), the nearest negative strictly farther than p, else the
    farthest negative; ties to the lowest index; pairs row-major."""
    d = _table(x)
    out = []
    for a, la in enumerate(labels):
        negatives = [n for n, ln in enumerate(labels) if ln != la]
        if not negatives:
            continue
        for p, lp in enumerate(labels):
            if p == a or lp != la:
                continue
            above = [n for n in negatives if d[a][n] > d[a][p]]
            if above:
                n = min(above, key=lambda j: (d[a][j], j))
            else:
                n = min(negatives, key=lambda j: (-d[a][j], j))
            out.append((a, p, n))
    return out


def ref_batch_hard_triplets(x: torch.Tensor, labels: list[int]) -> list[tuple[int, int, int]]:
    d = _table(x)
    out = []
    for a, la in enumerate(labels):
        pos = [p for p, lp in enumerate(labels) if p != a and lp == la]
        neg = [n for n, ln in enumerate(labels) if ln != la]
        if pos and neg:
            p = min(pos, key=lambda j: (-d[a][j], j))
            n = min(neg, key=lambda j: (d[a][j], j))
            out.append((a, p, n))
    return out


def _autograd_gap(x: torch.Tensor, triplets: list[tuple[int, int, int]]) -> torch.Tensor:
    """d(a, p) - d(a, n) through plain autograd indexing (the definition)."""
    a, p, n = (torch.tensor(t) for t in zip(*triplets, strict=True))
    return (x[a] - x[p]).pow(2).sum(1) - (x[a] - x[n]).pow(2).sum(1)


def _case(batch: int, kind: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "pk":  # every class K members, shuffled: the equal-count (fast) path
        k = 4 if batch % 4 == 0 else 2
        labels = torch.arange(batch // k).repeat_interleave(k)[torch.randperm(batch, generator=g)]
    else:  # ragged classes and singletons: the per-pair path
        labels = torch.randint(0, max(2, batch // 6), (batch,), generator=g) * 7 - 5
    # Small-integer grid: many exactly equal distances, exact in float32 and float64 alike.
    x = torch.randint(-1, 2, (batch, 3), generator=g).to(dtype)
    return x, labels


CASES = [
    (b, kind, dtype, seed)
    for seed, (b, kind) in enumerate(
        [(8, "pk"), (12, "ragged"), (32, "pk"), (33, "ragged"), (64, "pk"), (96, "ragged")]
    )
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-{c[1]}-{str(c[2])[6:]}")
def test_semihard_triplets_loss_and_gradient_match_the_definition(case):
    x, labels = _case(*case)
    expected = ref_semihard_triplets(x, labels.tolist())
    a, p, n = semihard_triplet_indices(x, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected

    margin = 1.5  # grid distances are integers: a wide margin keeps many hinges active
    x_ref = x.clone().requires_grad_(True)
    ref = torch.relu(_autograd_gap(x_ref, expected) + margin).mean()
    ref.backward()
    x_new = x.clone().requires_grad_(True)
    loss = semihard_triplet_loss(x_new, labels, margin=margin)
    loss.backward()
    assert loss.item() == ref.item()  # integer distances: exact in either dtype
    torch.testing.assert_close(x_new.grad, x_ref.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-{c[1]}-{str(c[2])[6:]}")
def test_batch_hard_triplets_loss_and_gradient_match_the_definition(case):
    x, labels = _case(*case)
    expected = ref_batch_hard_triplets(x, labels.tolist())
    a, p, n = batch_hard_triplet_indices(x, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected

    x_ref = x.clone().requires_grad_(True)
    ref = torch.relu(_autograd_gap(x_ref, expected) + 1.5).mean()
    ref.backward()
    x_new = x.clone().requires_grad_(True)
    loss = batch_hard_triplet_loss(x_new, labels, margin=1.5)
    loss.backward()
    assert loss.item() == ref.item()
    torch.testing.assert_close(x_new.grad, x_ref.grad, atol=1e-6, rtol=1e-6)


def test_both_semihard_branches_are_exercised_by_the_cases():
    fallback = semihard = 0
    for case in CASES:
        x, labels = _case(*case)
        d = _table(x)
        for a, p, n in ref_semihard_triplets(x, labels.tolist()):
            semihard += d[a][n] > d[a][p]
            fallback += d[a][n] <= d[a][p]
    assert fallback > 20 and semihard > 20


@pytest.mark.parametrize("kind", ["pk", "ragged"])
def test_tiny_blocks_give_the_same_selection(kind, monkeypatch):
    x, labels = _case(64, kind, torch.float32, seed=3)
    expected = semihard_triplet_indices(x, labels)  # the compiled CPU search
    monkeypatch.setattr(losses, "_compiled_search_applies", lambda embeddings: False)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 1)  # one row (or one pair) per block
    for got, want in zip(semihard_triplet_indices(x, labels), expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_compiled_and_torch_searches_agree_on_continuous_float32(seed, monkeypatch):
    # near-ties decided by float32 rounding: both searches read the same matrix, so they must
    # agree index for index (P x K with K = 4, and ragged classes)
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(256, 16, generator=g), dim=1)
    pk = torch.arange(64).repeat_interleave(4)
    ragged = torch.randint(0, 40, (256,), generator=g)
    for labels in (pk, ragged):
        compiled = semihard_triplet_indices(x, labels)
        with monkeypatch.context() as m:
            m.setattr(losses, "_compiled_search_applies", lambda embeddings: False)
            reference = semihard_triplet_indices(x, labels)
        for got, want in zip(compiled, reference, strict=True):
            assert torch.equal(got, want)


def test_random_float_batch_matches_a_reference_on_the_same_matrix():
    # Off the grid: the reference applies the rule to the very float32 matrix the miner uses,
    # so the comparison is exact whatever the rounding of the distances.
    g = torch.Generator().manual_seed(7)
    x = torch.nn.functional.normalize(torch.randn(128, 16, generator=g), dim=1)
    labels = torch.arange(32).repeat_interleave(4)[torch.randperm(128, generator=g)]
    d = losses.pairwise_squared_distances(x)
    same = labels[:, None] == labels[None, :]
    expected = []
    for a in range(128):
        neg = d[a].masked_fill(same[a], float("inf"))
        for p in (same[a] & (torch.arange(128) != a)).nonzero().flatten().tolist():
            above = neg.masked_fill(neg <= d[a, p], float("inf"))
            if torch.isfinite(above.min()):
                expected.append((a, p, int(above.argmin())))
            else:
                expected.append((a, p, int(d[a].masked_fill(same[a], -1.0).argmax())))
    a, p, n = semihard_triplet_indices(x, labels)
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected


def test_triplet_gap_gradient_is_exact_in_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a, p, n = torch.tensor([0, 0, 3, 6]), torch.tensor([1, 2, 4, 5]), torch.tensor([6, 6, 0, 1])
    assert torch.autograd.gradcheck(lambda t: triplet_gap_module.triplet_gap(t, a, p, n), (x,))


def test_degenerate_and_bf16_inputs():
    # No positive pair, one class only: empty selections, connected zero losses.
    for labels in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        x = torch.randn(5, 3, requires_grad=True)
        for fn in (semihard_triplet_indices, batch_hard_triplet_indices):
            assert all(t.numel() == 0 for t in fn(x, labels))
        semihard_triplet_loss(x, labels).backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    # bf16 input: mined and differentiated in float32, gradient back in bf16.
    x = torch.randint(-1, 2, (16, 3)).to(torch.bfloat16).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(4)
    loss = semihard_triplet_loss(x, labels, margin=1.5)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    expected = ref_semihard_triplets(x.float(), labels.tolist())
    assert loss.item() == torch.relu(_autograd_gap(x.float(), expected) + 1.5).mean().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_and_torch_triplet_gaps_agree(dtype, monkeypatch):
    g = torch.Generator().manual_seed(7)
    # unit-norm embeddings as the model's (distances <= 4): float32 rounding is ~1e-7 of them
    x = torch.nn.functional.normalize(torch.randn(96, 32, generator=g, dtype=dtype), dim=1)
    labels = torch.arange(24).repeat_interleave(4)
    a, p, n = semihard_triplet_indices(x, labels)
    weights = torch.rand(a.numel(), generator=g, dtype=dtype)
    weights[::3] = 0  # inactive hinges

    def gap_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        gap = triplet_gap_module.triplet_gap(leaf, a, p, n)
        (gap * weights).sum().backward()
        return gap.detach(), leaf.grad

    compiled = gap_and_grad()
    monkeypatch.setattr(triplet_gap_module, "_compiled_gap_applies", lambda x: False)
    reference = gap_and_grad()
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for got, want in zip(compiled, reference, strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
