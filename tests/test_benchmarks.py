"""The benchmarks run and report what they claim (quick sizes; never a timing threshold)."""

from __future__ import annotations

import copy
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

# `experiments` is a package of the repository, not of the installed distribution: the bare
# `pytest` script (unlike `python -m pytest`) does not put the repository root on sys.path.
REPO = str(Path(__file__).resolve().parents[1])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from test_losses import ref_semihard  # noqa: E402  (the loop reference of the semi-hard loss)

from experiments.benchmarks import (  # noqa: E402
    bench_input,
    bench_mining,
    bench_two_head,
    gpu_check,
    run_all,
)
from ranking_reg.utils.errors import ConfigError  # noqa: E402


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


class FakeClock:
    """A clock that moves only when told: the benchmarks' arithmetic on known step times."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- two-head overhead ----------------------------------------------------------------------------


def test_two_head_variants_share_backbone_and_classifier():
    torch.manual_seed(1)
    models = bench_two_head.build_models("small_cnn", 32, num_classes=7)
    images = torch.randn(3, 3, 32, 32)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        softmax_logits = models["softmax"](images)
        two_head = models["two_head"](images)
    # Same seed -> same backbone and classifier weights: only the embedding head differs.
    torch.testing.assert_close(softmax_logits, two_head.logits)
    extra = sum(p.numel() for p in models["two_head"].parameters()) - sum(
        p.numel() for p in models["softmax"].parameters()
    )
    assert extra == 128 * 4 * 4 * 256 + 256  # flatten(128 x 4 x 4) -> fc(256)


def test_two_head_step_minimises_ce_plus_semihard_triplet():
    models = bench_two_head.build_models("small_cnn", 16, num_classes=4)
    images, labels = next(bench_two_head.synthetic_batches(2, 4, 16, torch.device("cpu")))
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # P x K
    model = models["two_head"].eval()  # eval: BN statistics do not move between the two calls
    reference = copy.deepcopy(model)
    # The loss from its definition: cross-entropy written out (log-sum-exp minus the true
    # logit, averaged) + 1.0 x the loop reference of the semi-hard triplet loss (margin 0.2).
    out = reference(images)
    ce = torch.stack(
        [
            torch.logsumexp(row, 0) - row[y]
            for row, y in zip(out.logits, labels.tolist(), strict=True)
        ]
    ).mean()
    terms, _ = ref_semihard(out.embedding, labels.tolist(), 0.2)
    expected = ce + torch.stack(terms).mean()
    expected.backward()

    step = bench_two_head.make_step("two_head", model, torch.device("cpu"), bf16=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(step(images, labels), expected.detach())
    # One SGD step, lr 0.01 (the momentum buffer starts as the gradient): p <- p - 0.01 g.
    for name, p in reference.named_parameters():
        torch.testing.assert_close(
            dict(model.named_parameters())[name].detach(),
            before[name] - 0.01 * p.grad,
            atol=1e-6,
            rtol=1e-5,
            msg=name,
        )


def test_two_head_quick_rows(monkeypatch):
    # The quick mode's shape (resnet18 at 64 px, P x K = 2 x 4, 1 warm-up + 2 timed steps) with
    # small_cnn for speed, and a clock that the steps move by known amounts: softmax 0.5 s, the
    # two-head steps 0.625 s then 0.75 s (after a warm-up step of 9 s that must not count).
    clock = FakeClock()
    two_head_times = iter([9.0, 0.625, 0.75])
    real_make_step = bench_two_head.make_step

    def make_step(variant, model, device, bf16):
        step = real_make_step(variant, model, device, bf16)

        def timed(images, labels):
            clock.advance(0.5 if variant == "softmax" else next(two_head_times))
            return step(images, labels)

        return timed

    monkeypatch.setattr(bench_two_head, "make_step", make_step)
    monkeypatch.setattr(bench_two_head, "_clock", lambda device, kind: clock)
    rows = bench_two_head.run(quick=True, backbones=("small_cnn",))
    assert len(rows) == 1
    row = rows[0]
    assert row["bench"] == "two_head" and row["device"] == "cpu" and row["batch"] == 8
    assert (row["backbone"], row["img_size"], row["steps"]) == ("small_cnn", 64, 2)
    # medians: softmax 0.5 s, two-head (0.625 + 0.75) / 2; pair ratios 1.25 and 1.5
    assert row["softmax_s"] == 0.5 and row["two_head_s"] == pytest.approx(0.6875)
    assert row["softmax_ips"] == 16.0 and row["two_head_ips"] == pytest.approx(8 / 0.6875)
    assert row["ratio"] == pytest.approx(1.375) and row["overhead_pct"] == pytest.approx(37.5)
    assert row["ratio_iqr"] == pytest.approx([1.3125, 1.4375])  # quartiles of {1.25, 1.5}
    # small_cnn at 64 px: a 128 x 8 x 8 map, so the embedding head adds 8192 x 256 + 256 weights.
    assert row["params_two_head_m"] - row["params_softmax_m"] == pytest.approx(2.097408)
    table = bench_two_head.markdown_table(rows)
    assert "| small_cnn | cpu | fp32 | 8 | 64 |" in table and "| +37.5 % |" in table


# -- input pipeline -------------------------------------------------------------------------------


def test_input_quick_rows_and_jpeg_cache(tmp_path, monkeypatch):
    # Every image costs a known time on a fake thread clock: 4 ms through torchvision's
    # ImageFolder, 5 / 2 / 2.5 ms through ours with decode_size None / 64 / 73.
    clock = FakeClock()
    cost = {None: 0.005, 64: 0.002, 73: 0.0025}

    class TimedImageFolder(bench_input.ImageFolder):
        def __getitem__(self, index):
            clock.advance(0.004)
            return super().__getitem__(index)

    class TimedImageList(bench_input.ImageListDataset):
        def __getitem__(self, index):
            clock.advance(cost[self.decode_size])
            return super().__getitem__(index)

    monkeypatch.setattr(bench_input, "ImageFolder", TimedImageFolder)
    monkeypatch.setattr(bench_input, "ImageListDataset", TimedImageList)
    monkeypatch.setattr(bench_input, "time", types.SimpleNamespace(thread_time=clock))
    rows = bench_input.run(quick=True, cache_dir=tmp_path)
    assert [r["decode_size"] for r in rows] == [None, 64, 73]
    for row in rows:
        assert row["bench"] == "input" and row["images"] == 12 and row["image_wh"] == "400x300"
        assert row["torchvision_ips"] == pytest.approx(250.0)  # 1 / 4 ms
    assert [r["ours_ips"] for r in rows] == pytest.approx([200.0, 500.0, 400.0])
    assert [r["ratio"] for r in rows] == pytest.approx([0.8, 2.0, 1.6])  # ours / torchvision
    assert "| decode_size=64 | 12 | 400x300 |" in bench_input.markdown_table(rows)
    assert "| 250.0 | 500.0 | 2.00x |" in bench_input.markdown_table(rows)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 12 and len({f.parent.name for f in files}) == bench_input.CLASSES
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (400, 300)
        pixels = torch.tensor(list(im.convert("L").getdata()), dtype=torch.float32)
    assert pixels.std() > 10  # a textured image, not a flat one
    stamps = [f.stat().st_mtime_ns for f in files]
    bench_input.run(quick=True, cache_dir=tmp_path, decode_sizes=(64,))
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not regenerated


# -- mining ---------------------------------------------------------------------------------------


def test_mining_quick_rows_and_speedup_column(monkeypatch):
    rows = bench_mining.run(quick=True)
    semihard = [r for r in rows if r["method"] == "semihard"]
    hard = [r for r in rows if r["method"] == "batch_hard"]
    assert [r["B"] for r in semihard] == [r["B"] for r in hard] == [32, 64, 128]
    assert all(r["bench"] == "mining" and _positive_finite(r["ours_s"]) for r in rows)
    # PML's O(B³) semi-hard miner only at the small sizes; its batch-hard miner at all of them
    assert [r["pml_s"] is None for r in semihard] == [False, False, True]
    assert all(_positive_finite(r["pml_s"]) for r in hard)

    # With known times (ours 2 ms, PML 10 ms) the speed-up is PML / ours = 5.
    def fixed(loss_fns, x, y, repeats, calls=None):
        return [0.002, 0.010][: len(loss_fns)]

    monkeypatch.setattr(bench_mining, "_median_seconds", fixed)
    rows = bench_mining.run(quick=True)
    assert [r["ratio"] for r in rows] == pytest.approx([5.0, 5.0, 5.0, 5.0, None, 5.0])
    table = bench_mining.markdown_table(rows)
    assert "| semihard | 32 | 2.0 | 10.0 | 5.0x |" in table
    assert "| semihard | 128 | 2.0 | — | — |" in table


def test_mining_rounds_call_each_function_its_number_of_times():
    # ours five calls a round against PML's one; a warm-up round is run and not timed
    made = {"fast": 0, "slow": 0}

    def loss(name):
        def fn(x, y):
            made[name] += 1
            return (x * 2).sum()

        return fn

    x = torch.ones(3, requires_grad=True)
    times = bench_mining._median_seconds(
        [loss("fast"), loss("slow")], x, torch.zeros(3), repeats=2, calls=(5, 1)
    )
    assert made == {"fast": 15, "slow": 3} and all(t > 0 for t in times)


# -- run_all --------------------------------------------------------------------------------------


def test_run_all_writes_json_and_markdown(tmp_path, capsys):
    assert run_all.main(["--out", str(tmp_path / "out"), "--quick", "--only", "input"]) == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(report["machine"]) >= {"cpu", "cores", "torch", "date"}
    assert report["machine"]["torch"] == torch.__version__
    assert report["benches"] == {"input": {"status": "ok", "seconds": pytest.approx(0, abs=60)}}
    assert [r["bench"] for r in report["rows"]] == ["input"] * 3
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "## Input pipeline" in markdown and "| decode_size=64 | 12 |" in markdown
    assert markdown.strip() in capsys.readouterr().out
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_run_all_records_pending_and_failed_benches(tmp_path, monkeypatch):
    failing = types.ModuleType("experiments.benchmarks.bench_broken")

    def explode(quick: bool = False):
        raise RuntimeError("boom")

    failing.run = explode
    monkeypatch.setitem(sys.modules, failing.__name__, failing)
    monkeypatch.setitem(run_all.BENCHES, "broken", ("bench_broken", "Broken"))
    monkeypatch.setitem(run_all.BENCHES, "later", ("bench_not_written_yet", "Later"))
    assert run_all.main(["--out", str(tmp_path), "--quick", "--only", "broken,later"]) == 1
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["benches"]["later"]["status"] == "pending"
    assert report["benches"]["broken"] == {"status": "failed", "error": "RuntimeError: boom"}
    markdown = (tmp_path / "bench.md").read_text()
    assert "## Later\n\npending" in markdown and "FAILED: `RuntimeError: boom`" in markdown


def test_run_all_rejects_unknown_bench(tmp_path):
    with pytest.raises(ConfigError, match="--only two_head,nope: unknown benchmark nope"):
        run_all.run_all(tmp_path, quick=True, only="two_head,nope")


def test_targets_are_checked_against_the_issue():
    benches = {
        "two_head": {"rows": [{"backbone": "resnet50", "device": "cpu", "overhead_pct": 4.9}]},
        "input": {
            "rows": [
                {"variant": "decode_size=224", "decode_size": 224, "img_size": 224,
                 "image_wh": "1000x750", "ratio": 1.8},
                {"variant": "decode_size=None", "decode_size": None, "img_size": 224,
                 "image_wh": "1000x750", "ratio": 1.0},
            ]
        },
        "eval": {
            "rows": [
                {"variant": "retrieval", "ratio": 1.6, "ours_recall@1": 0.5,
                 "pml_recall@1": 0.5, "ours_map@r": 0.25, "pml_map@r": 0.25},
                {"variant": "retrieval+nmi", "ratio": 3.0, "ours_recall@1": 0.5,
                 "pml_recall@1": 0.51, "ours_map@r": 0.25, "pml_map@r": 0.25},
            ]
        },
        "mining": {
            "rows": [
                {"method": "semihard", "B": 256, "ratio": 8.0},
                {"method": "semihard", "B": 1024, "ratio": 114.4},
                {"method": "batch_hard", "B": 1024, "ratio": 5.0},
            ]
        },
        "predict": {
            "rows": [
                {"backbone": "resnet18", "gallery": 23929, "overhead_pct": 4.0},
                {"backbone": "resnet50", "gallery": 23929, "overhead_pct": 10.5},
            ]
        },
    }  # fmt: skip
    targets = run_all.check_targets(benches)
    # the NMI row is reported with its ratio and its differing values, but has no goal
    assert [t["met"] for t in targets] == [True, False, True, None, True, None, True, False]
    assert targets[1]["measured"] == "1.80x" and "DIFFER" in targets[3]["measured"]
    assert "no goal" in targets[3]["target"]
    assert "1.5x" in targets[2]["target"] and targets[2]["measured"].startswith("1.6x")
    assert targets[4]["measured"] == "114.4x" and ">= 100x" in targets[4]["target"]
    assert targets[7]["measured"] == "+10.5 %" and "resnet50" in targets[7]["target"]
    assert "| **no** |" in run_all.targets_table(targets)


# -- GPU check ------------------------------------------------------------------------------------


def test_pk_batches_are_p_classes_of_k_distinct_images():
    labels = [i % 5 for i in range(40)] + [5, 5]  # class 5 has too few images for K = 4
    sampler = iter(gpu_check.PKBatches(labels, p=3, k=4))
    for _ in range(20):
        batch = next(sampler)
        assert len(batch) == 12 and len(set(batch)) == 12
        groups = [[labels[i] for i in batch[j : j + 4]] for j in range(0, 12, 4)]
        assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3
        assert 5 not in {g[0] for g in groups}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_check_without_cuda_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no CUDA device is visible" in err and "--cpu" in err


def test_gpu_check_cpu_quick(tmp_path, capsys, monkeypatch):
    # The quick mode with small_cnn at 32 px on 8 small JPEGs (2 classes of K = 4): the same
    # code path (synthetic steps, a 1-worker loader, steps fed by it) in a fraction of the time.
    small = {"backbone": "small_cnn", "img_size": 32, "images": 8, "wh": (64, 48)}
    monkeypatch.setattr(gpu_check, "QUICK", {**gpu_check.QUICK, **small})
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    assert gpu_check.main(["--cpu", "--quick", "--workers", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"] for r in rows] == ["synthetic", "loader", "real input", "ddp smoke"]
    for row in (rows[0], rows[2]):
        assert _positive_finite(row["ratio"]) and row["precision"] == "fp32"
        assert row["channels_last"] is True and row["batch"] == 8 and row["img_size"] == 32
    assert _positive_finite(rows[1]["loader_ips"]) and rows[3]["skipped"] is True
    assert rows[1]["setting"] == "1 workers, decode_size=32, 64x48 JPEGs"
    assert torch.get_num_threads() == threads  # the CPU mode's one thread is not left behind
    printed = capsys.readouterr().out
    assert "| synthetic | small_cnn, 2x4 @ 32 px, fp32, channels_last |" in printed


# -- predict and gallery index --------------------------------------------------------------------


def test_index_quick_rows_recall_against_exact():
    from experiments.benchmarks import bench_index

    rows = bench_index.run(quick=True)
    assert [r["kind"] for r in rows] == ["exact", "flat", "ivf", "hnsw"]
    assert all(r["bench"] == "index" and r["data"] == "clustered" for r in rows)
    assert all(r["N"] == 2000 and r["dim"] == 32 and r["queries"] == 100 for r in rows)
    assert rows[0]["recall@10"] == rows[1]["recall@10"] == 1.0  # flat is exact too
    assert all(0.9 <= r["recall@10"] <= 1.0 for r in rows[2:])
    assert all(_positive_finite(r["qps"]) and _positive_finite(r["speedup"]) for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[2]["params"] == {"nlist": 51, "nprobe": 6}
    assert bench_index.recall_at([[1, 2, 3, 4]], [[4, 3, 9, 8]]) == 0.5
    table = bench_index.markdown_table(rows)
    assert "| clustered | ivf | 2000 | 32 | 100 | nlist=51, nprobe=6 |" in table


def test_predict_quick_row_and_pipeline(tmp_path, monkeypatch):
    import numpy as np

    from experiments.benchmarks import bench_predict

    # The pipeline writes what predict writes, from the model's own outputs.
    model = bench_predict.build_model("small_cnn", 32)
    images = torch.randn(6, 3, 32, 32)
    gallery = bench_predict.synthetic_gallery(50)
    embedded = bench_predict.predict_pipeline(model, images, 4, gallery, str(tmp_path))
    with torch.no_grad():
        expected = model(images).embedding.numpy()
    np.testing.assert_allclose(embedded.embeddings, expected, atol=1e-5)
    rows = [
        json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().split("\n")[:-1]
    ]
    assert len(rows) == 6 and all(len(r["classes"]) == len(r["neighbors"]) == 5 for r in rows)
    assert np.load(tmp_path / "embeddings.npy").shape == (6, 256)

    # Known CPU times: the plain loop 0.5 s; predict's forward part 0.5 s then 0.52 s, the part
    # after it 0.05 s then 0.06 s (after warm-ups of 9 s and 1 s that must not count).
    clock = FakeClock()
    embed_times, finish_times = iter([9.0, 0.5, 0.52]), iter([1.0, 0.05, 0.06])
    monkeypatch.setattr(bench_predict, "_clock", clock)
    monkeypatch.setattr(bench_predict, "plain_loop", lambda *a: clock.advance(0.5))
    monkeypatch.setattr(
        bench_predict, "embed_step", lambda *a: clock.advance(next(embed_times)) or embedded
    )
    monkeypatch.setattr(bench_predict, "finish_step", lambda *a: clock.advance(next(finish_times)))
    (row,) = bench_predict.run(quick=True)
    assert (row["bench"], row["backbone"], row["images"], row["rounds"]) == (
        "predict",
        "small_cnn",
        64,
        2,
    )
    # rounds: 0.55 / 0.5 and 0.58 / 0.5 -> median ratio 1.13
    assert row["model_s"] == 0.5 and row["predict_s"] == pytest.approx(0.565)
    assert row["ratio"] == pytest.approx(1.13) and row["overhead_pct"] == pytest.approx(13.0)
    assert row["finish_s"] == pytest.approx(0.055) and row["finish_pct"] == pytest.approx(11.0)
    assert row["model_ips"] == 128.0 and row["embedding_dim"] == 256
    assert "| small_cnn | 32 | 64 | 16 | 1000 | 128.0 | 113.3 | +13.0 % | 11.0 % |" in (
        bench_predict.markdown_table([row])
    )
