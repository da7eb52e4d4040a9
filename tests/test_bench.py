"""The benchmark runs and reports figures (no speed is asserted: it is a benchmark)."""

import json

import pytest
import torch

from effv2_lib import build_model
from effv2_lib.bench import main, torchvision_equivalent
from effv2_lib.interop import randomize_batchnorm, torchvision_key_map


@pytest.mark.parametrize("name", ["cifar", "cifar-tiny"])
def test_torchvision_equivalent_computes_the_same_function(name):
    torch.manual_seed(0)
    ours = randomize_batchnorm(build_model(name, num_classes=10)).eval()
    theirs = torchvision_equivalent(ours).eval()
    state = ours.state_dict()
    theirs.load_state_dict({their_key: state[key] for key, their_key in torchvision_key_map(ours).items()})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        # stem stride 1 as ours: a stride-2 stem would leave a 1 x 1 map and other outputs
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    with pytest.raises(TypeError, match="EfficientNetV2"):
        torchvision_equivalent(theirs)


def test_bench_prints_and_writes_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--device", "cpu", "--model", "cifar-tiny", "--sizes", "16", "20", "--steps", "1", "--warmup", "0",
                 "--batch-size", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torchvision img/s" in text and "batch 4" in text and torch.__version__ in text
    figures = json.loads(out.read_text())
    assert [row["size"] for row in figures["rows"]] == [16, 20]
    for row in figures["rows"]:
        assert row["ours"] > 0 and row["torchvision"] > 0
        assert row["ratio"] == pytest.approx(row["ours"] / row["torchvision"])
    assert figures["params"]["ours"] == figures["params"]["torchvision"]
    assert figures["hardware"]["device"] == "cpu" and figures["batch_size"] == 4
