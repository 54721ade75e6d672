"""Backbones truncated at the last feature map, the two heads, and the pretrained-weights paths."""

from __future__ import annotations

import pytest
import torch

from ranking_reg.models.backbones import build_backbone
from ranking_reg.models.two_head import TwoHeadNet
from ranking_reg.utils.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "img_size", "shape"),
    [
        ("small_cnn", 32, (128, 4, 4)),
        ("resnet18", 64, (512, 2, 2)),
        ("resnet50", 224, (2048, 7, 7)),  # the paper's h: 7 x 7 x 2048
    ],
)
def test_backbones_report_their_last_feature_map(name, img_size, shape):
    backbone = build_backbone(name, img_size=img_size, pretrained=False)
    assert (backbone.channels, *backbone.spatial) == shape
    assert backbone.flat_dim == shape[0] * shape[1] * shape[2]
    with torch.no_grad():
        out = backbone.features(torch.zeros(2, 3, img_size, img_size))
    assert tuple(out.shape) == (2, *shape)


def test_two_heads_come_out_of_one_forward_pass():
    torch.manual_seed(0)
    net = TwoHeadNet(build_backbone("small_cnn", 32), num_classes=10, embedding_dim=256)
    assert net.embedder.in_features == 128 * 4 * 4  # flatten of h, not the pooled vector
    out = net(torch.randn(6, 3, 32, 32))
    assert out.logits.shape == (6, 10) and out.embedding.shape == (6, 256)
    assert out.pooled.shape == (6, 128)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(6), atol=1e-5)
    # the classification head is GAP -> fc on the same feature map
    feature_map = net.features(torch.zeros(1, 3, 32, 32))
    expected = net.classifier(feature_map.mean(dim=(2, 3)))
    assert torch.allclose(net(torch.zeros(1, 3, 32, 32)).logits, expected, atol=1e-6)


def test_pooled_embedding_source_is_the_cheaper_ablation():
    net = TwoHeadNet(build_backbone("small_cnn", 32), 10, embedding_source="pooled")
    assert net.embedder.in_features == 128
    with pytest.raises(ConfigError, match="model.embedding_source=bogus"):
        TwoHeadNet(build_backbone("small_cnn", 32), 10, embedding_source="bogus")


def test_resnet50_flatten_head_has_the_papers_25_7m_weights():
    backbone = build_backbone("resnet50", img_size=224, pretrained=False)
    net = TwoHeadNet(backbone, num_classes=100)
    assert net.embedder.weight.numel() == 100_352 * 256  # 25.7 M


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
