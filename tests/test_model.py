"""Backbones truncated at the last feature map, the two heads, and the pretrained-weights paths."""

from __future__ import annotations

import pytest
import torch

from ranking_reg.models.backbones import build_backbone
from ranking_reg.models.two_head import TwoHeadNet
from ranking_reg.utils.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "img_size", "shape", "flat_dim"),
    [
        ("small_cnn", 32, (128, 4, 4), 2048),  # three stride-2 stages: 32 -> 4
        ("resnet18", 64, (512, 2, 2), 2048),  # stride 32: 64 -> 2
    ],
)
def test_backbones_report_their_last_feature_map(name, img_size, shape, flat_dim):
    backbone = build_backbone(name, img_size=img_size, pretrained=False)
    assert (backbone.channels, *backbone.spatial) == shape
    assert backbone.flat_dim == flat_dim
    with torch.no_grad():
        out = backbone.features(torch.zeros(2, 3, img_size, img_size))
    assert tuple(out.shape) == (2, *shape)


@pytest.mark.slow  # builds the real ResNet-50 (~1 s): the only check of the paper's sizes
def test_resnet50_at_224_has_the_papers_map_and_25_7m_flatten_head():
    backbone = build_backbone("resnet50", img_size=224, pretrained=False)
    assert (backbone.channels, *backbone.spatial) == (2048, 7, 7)  # the paper's h: 7 x 7 x 2048
    net = TwoHeadNet(backbone, num_classes=100)
    assert net.embedder.in_features == 100_352
    assert net.embedder.weight.numel() == 25_690_112  # 100,352 x 256: the paper's 25.7 M
    assert net.classifier.weight.shape == (100, 2048)


def test_two_heads_come_out_of_one_forward_pass():
    torch.manual_seed(0)
    net = TwoHeadNet(build_backbone("small_cnn", 32), num_classes=10, embedding_dim=256).eval()
    assert net.embedder.in_features == 2048  # flatten of h (128 x 4 x 4), not the pooled vector
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = net(images)
        feature_map = net.features(images)
    assert out.logits.shape == (3, 10) and out.embedding.shape == (3, 256)
    assert out.pooled.shape == (3, 128)
    # Reference from the definition, one image at a time: GAP = the mean of the 16 positions
    # -> W p + b; embedding = W' (h flattened channel by channel) + b', scaled to unit length.
    w, b = net.classifier.weight, net.classifier.bias
    w_e, b_e = net.embedder.weight, net.embedder.bias
    for i in range(3):
        h = feature_map[i]
        pooled = sum(h[:, y, x] for y in range(4) for x in range(4)) / 16
        flat = torch.cat([h[c].reshape(-1) for c in range(128)])
        embedding = w_e @ flat + b_e
        torch.testing.assert_close(out.pooled[i], pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[i], w @ pooled + b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            out.embedding[i], embedding / embedding.norm(), atol=1e-5, rtol=1e-5
        )


def test_pooled_embedding_source_is_the_cheaper_ablation():
    net = TwoHeadNet(build_backbone("small_cnn", 32), 10, embedding_source="pooled")
    assert net.embedder.in_features == 128
    with pytest.raises(ConfigError, match=r"embedding_source=bogus"):
        TwoHeadNet(build_backbone("small_cnn", 32), 10, embedding_source="bogus")


def test_pretrained_without_network_names_the_way_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # an endpoint that refuses connections, and an empty cache: the error must come at once
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError) as raised:
        build_backbone("resnet18", img_size=64, pretrained=True)
    message = str(raised.value)
    assert "backbone.pretrained=false" in message and "backbone.weights_file" in message
    assert "resnet18.tv_in1k" in message


def test_weights_file_loads_local_weights(tmp_path):
    import timm

    source = timm.create_model("resnet18.tv_in1k", pretrained=False)
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", img_size=64, weights_file=str(path))
    assert torch.all(backbone.features.model.conv1.weight == 0.125)
    with pytest.raises(ConfigError, match="backbone.weights_file=.*does not exist"):
        build_backbone("resnet18", img_size=64, weights_file=str(tmp_path / "missing.pth"))


def test_unknown_architecture_and_small_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="timm has no model"):
        build_backbone("resnet_nonexistent", img_size=64)
    with pytest.raises(ConfigError, match="data.img_size=4"):
        build_backbone("small_cnn", img_size=4)
