"""`lowloss sightsee`: pictures, one-line errors for bad input, and a tiny end-to-end run."""

import numpy as np
import pytest

from lowloss.errors import LowlossError
from lowloss.methods import sightsee as S


def test_default_picture_and_targets():
    pic = S.default_picture()
    assert pic.shape == (16, 16) and set(np.unique(pic)) == {0.0, 1.0}
    t = S._targets(pic, 0.05, 2.0)
    assert np.isclose(t[pic == 0], np.log(0.05)).all() and np.isclose(t[pic == 1], np.log(2.0)).all()
    a, b = S._coords(4)
    assert a[0] == -1 and b[0] == 1 and a[-1] == 1 and b[-1] == -1  # row-major from the top-left pixel


def test_read_picture_resizes_and_rejects_non_images(tmp_path):
    from PIL import Image

    img = np.zeros((32, 32), np.uint8)
    img[:, 16:] = 255
    Image.fromarray(img).save(tmp_path / "half.png")
    pic = S.read_picture(tmp_path / "half.png", 8)
    assert pic.shape == (8, 8) and pic[:, :4].max() == 0 and pic[:, 4:].min() == 1
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(LowlossError, match="not an image"):
        S.read_picture(tmp_path / "x.png", 8)
    with pytest.raises(LowlossError, match="does not exist"):
        S.read_picture(tmp_path / "missing.png", 8)


@pytest.fixture(scope="module")
def mode(tmp_path_factory):
    from lowloss.methods.train import Config, train

    root = tmp_path_factory.mktemp("sightsee")
    train(Config(model="mlp", model_options={"widths": "16"}, epochs=1, device="cpu"), root / "m", quiet=True)
    return root / "m"


def test_blank_picture_is_a_one_line_error_before_anything_is_written(mode, tmp_path):
    from PIL import Image

    from lowloss.api import run

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(LowlossError, match="blank"):
        run("sightsee", inputs=[mode], out=tmp_path / "out", picture=str(tmp_path / "blank.png"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_tiny_sightsee_run(mode, tmp_path):
    from lowloss.api import run

    out = tmp_path / "ss"
    res = run("sightsee", inputs=[mode], out=out, device="cpu", grid=6, epochs=1, batch_size=512,
              points_per_step=2, plane_grid=3, quiet=True)
    assert (out / "sightsee.png").exists() and (out / "plane" / "plane.npz").exists()
    assert len(res["train_loss"]) == 36 and len(res["held_out"]) == round(0.2 * 36)
    assert -1 <= res["agreement"]["held_out"] <= 1 and 0 <= res["origin"]["test_accuracy"] <= 1
    assert res["cost"]["gradient_evaluations"] == 3 * 2  # 3 minibatches of 512 in an epoch, 2 points each
    loaded = S.load(out)
    assert set(loaded["tensors"]) == {"origin", "u", "v"}
