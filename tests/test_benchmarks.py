"""The benchmarks run and report what they claim (quick sizes; never a timing threshold)."""

from __future__ import annotations

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

from experiments.benchmarks import bench_input, bench_two_head, gpu_check, run_all  # noqa: E402
from ranking_reg.utils.errors import ConfigError  # noqa: E402


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


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
    from ranking_reg.losses import semihard_triplet_loss

    models = bench_two_head.build_models("small_cnn", 32, num_classes=4)
    images, labels = next(bench_two_head.synthetic_batches(2, 4, 32, torch.device("cpu")))
    model = models["two_head"].eval()  # eval: BN statistics do not move between the two calls
    with torch.no_grad():
        out = model(images)
        expected = torch.nn.functional.cross_entropy(out.logits, labels) + semihard_triplet_loss(
            out.embedding, labels, margin=0.2
        )
    step = bench_two_head.make_step("two_head", model, torch.device("cpu"), bf16=False)
    torch.testing.assert_close(step(images, labels), expected)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # P x K


def test_two_head_quick_rows():
    rows = bench_two_head.run(quick=True)
    assert [r["backbone"] for r in rows] == ["resnet18"]
    row = rows[0]
    assert row["bench"] == "two_head" and row["device"] == "cpu" and row["batch"] == 8
    for key in ("softmax_s", "two_head_s", "ratio", "softmax_ips", "two_head_ips"):
        assert _positive_finite(row[key]), key
    low, high = row["ratio_iqr"]
    assert 0 < low <= row["ratio"] <= high and math.isfinite(high)
    assert row["overhead_pct"] == pytest.approx(100 * (row["ratio"] - 1))
    # resnet18 at 64 px: a 512 x 2 x 2 map, so the embedding head adds 2048 x 256 + 256 weights.
    assert row["params_two_head_m"] - row["params_softmax_m"] == pytest.approx(0.524544)
    assert "| resnet18 | cpu | fp32 | 8 | 64 |" in bench_two_head.markdown_table(rows)


# -- input pipeline -------------------------------------------------------------------------------


def test_input_quick_rows_and_jpeg_cache(tmp_path):
    rows = bench_input.run(quick=True, cache_dir=tmp_path)
    assert [r["decode_size"] for r in rows] == [None, 64, 73]
    for row in rows:
        assert row["bench"] == "input" and row["images"] == 12 and row["image_wh"] == "400x300"
        for key in ("torchvision_ips", "ours_ips", "ratio"):
            assert _positive_finite(row[key]), key
        assert row["ratio"] == pytest.approx(row["ours_ips"] / row["torchvision_ips"])
    assert len({r["torchvision_ips"] for r in rows}) == 1  # one baseline, timed with all of them
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 12 and len({f.parent.name for f in files}) == bench_input.CLASSES
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (400, 300)
        pixels = torch.tensor(list(im.convert("L").getdata()), dtype=torch.float32)
    assert pixels.std() > 10  # a textured image, not a flat one
    stamps = [f.stat().st_mtime_ns for f in files]
    bench_input.run(quick=True, cache_dir=tmp_path, decode_sizes=(64,))
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not regenerated


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
                {"variant": "retrieval", "ratio": 3.0, "ours_recall@1": 0.5,
                 "pml_recall@1": 0.5, "ours_map@r": 0.25, "pml_map@r": 0.25},
                {"variant": "retrieval+nmi", "ratio": 3.0, "ours_recall@1": 0.5,
                 "pml_recall@1": 0.51, "ours_map@r": 0.25, "pml_map@r": 0.25},
            ]
        },
    }  # fmt: skip
    targets = run_all.check_targets(benches)
    assert [t["met"] for t in targets] == [True, False, True, False]
    assert targets[1]["measured"] == "1.80x" and "DIFFER" in targets[3]["measured"]
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


def test_gpu_check_cpu_quick(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    assert gpu_check.main(["--cpu", "--quick", "--workers", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"] for r in rows] == ["synthetic", "loader", "real input", "ddp smoke"]
    for row in (rows[0], rows[2]):
        assert _positive_finite(row["ratio"]) and row["precision"] == "fp32"
        assert row["channels_last"] is True and row["batch"] == 8
    assert _positive_finite(rows[1]["loader_ips"]) and rows[3]["skipped"] is True
    assert torch.get_num_threads() == threads  # the CPU mode's one thread is not left behind
    printed = capsys.readouterr().out
    assert "| synthetic | resnet18, 2x4 @ 64 px, fp32, channels_last |" in printed
