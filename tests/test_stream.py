"""Images streamed from disk (vcon/stream.py): a generated JPEG folder in ImageNet's layout, read by DataLoader
workers, crops seeded per example so that a resumed epoch reads what an uninterrupted one would."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, make_config
from vcon import checkpoint, data, stream, train
from vcon.errors import ConfigError

COLOURS = {"n01": (200, 40, 40), "n02": (40, 200, 40), "n03": (40, 40, 200)}


def make_folder(root, per_class=(40, 10), size=(48, 40)):
    """train/ and val/ with a class per dominant colour, noisy JPEGs of varied size."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for wnid, colour in COLOURS.items():
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                w, h = size[0] + i % 7, size[1] + i % 5
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imagenet"))


def config(folder, *overrides):
    return make_config(*QUICK, "model=vit-micro-scratch", "model.config.num_channels=3", "data=imagenet",
                       f"data.path={folder}",
                       "data.image_size=28", "data.workers=2", "data.val_size=12", "data.train_size=null",
                       "data.test_size=null", "train.batch_size=12", *overrides)


def test_the_folder_is_streamed_with_its_val_folder_as_the_test_split(folder):
    dataset = data.load(config(folder).data)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (108, 12, 30)
    assert dataset.train.streamed and dataset.train.augment and not dataset.val.augment
    assert not dataset.test.augment and dataset.train.example_shape == (3, 28, 28)
    images, labels = next(dataset.test.batches(torch.arange(30), 8))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 28, 28) and labels.tolist() == [0] * 8
    red = images[:, 0].float().mean() - images[:, 1:].float().mean()
    assert red > 80  # the class's colour came through decoding and cropping


def test_a_resumed_epoch_reads_the_same_crops_as_an_uninterrupted_one(folder):
    split = data.load(config(folder).data).train
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(3))
    whole = list(split.batches(order, 12, start=0, salt=7))
    resumed = list(split.batches(order, 12, start=4, salt=7))
    assert len(whole) == 9 and len(resumed) == 5
    for (a, la), (b, lb) in zip(whole[4:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    other_epoch = next(split.batches(order, 12, start=0, salt=8))[0]
    assert not torch.equal(other_epoch, whole[0][0])  # new random crops each epoch
    halves = [list(split.batches(order, 12, world=type("W", (), {"rank": r, "size": 2})())) for r in (0, 1)]
    seen = [set(torch.cat([labels for _, labels in h]).tolist()) for h in halves]
    assert all(len(h) == 9 and len(h[0][0]) == 6 for h in halves) and seen  # each rank: half of every batch


def test_a_streamed_run_learns_and_resumes_like_an_uninterrupted_one(folder, tmp_path):
    overrides = ["train.epochs=3", "vcon.epochs=1", "train.lr=2e-3"]
    whole = train.run(config(folder, *overrides), tmp_path / "whole")

    def stop_after_one(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(config(folder, *overrides), tmp_path / "split", on_epoch_end=stop_after_one)
    resumed = train.run(config(folder, *overrides), tmp_path / "split")
    a, b = checkpoint.load(tmp_path / "whole")["model"], checkpoint.load(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["test_acc"] == whole["test_acc"] and whole["step"] == 3 * 9
    assert whole["test_acc"] > 60, whole["test_acc"]  # three colours: chance is 33 %


def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path, folder):
    with pytest.raises(ConfigError, match="expected ImageNet's layout"):
        data.check(config(tmp_path).data)
    odd = make_folder(tmp_path / "odd", per_class=(4, 2))
    (odd / "val" / "n03").rename(odd / "val" / "n04")
    with pytest.raises(ConfigError, match=r"missing \['n03'\], extra \['n04'\]"):
        data.load(config(odd).data)
    broken = make_folder(tmp_path / "broken", per_class=(4, 2))
    (broken / "val" / "n01" / "n01_0.JPEG").write_bytes(b"not a jpeg")
    cfg = config(broken, "data.val_size=2")
    with pytest.raises(OSError, match="n01_0.JPEG"):
        list(data.load(cfg.data).test.batches(torch.arange(6), 6))
    skipping = data.load(config(broken, "data.val_size=2", "data.bad_images=skip").data).test
    (images, labels), = skipping.batches(torch.arange(6), 6)  # n01_0 replaced by n01_1, its label with it
    assert torch.equal(images[0], images[1]) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="data.bad_images='ignore'"):
        data.load(config(broken, "data.bad_images=ignore").data)


def test_imagefolder_streams_when_asked(folder):
    cfg = make_config("data=imagefolder", f"data.path={folder}", "data.stream=true", "data.image_size=28",
                      "data.val_size=12")
    assert stream.streams(cfg.data) and data.load(cfg.data).train.streamed
    auto = make_config("data=imagefolder", f"data.path={folder}", "data.stream=auto").data
    assert not stream.streams(auto)  # 120 small images fit in memory
