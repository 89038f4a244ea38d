"""Images streamed from disk (vcon/data/stream.py): a generated JPEG folder in ImageNet's layout and a local copy of the
hub's parquet layout, read by DataLoader workers, crops seeded per example so that a resumed epoch reads what an
uninterrupted one would. Whole streamed runs killed and resumed through run.py: tests/test_run.py."""
import pytest
import torch
from conftest import QUICK, make_config, make_folder, numbered_folder, numbers

from vcon import data
from vcon.data import stream
from vcon.errors import ConfigError
from vcon.train import distributed
from vcon.train import loop as train


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


def test_each_process_reads_its_own_half_of_every_batch(tmp_path):
    """With 2 processes, the epoch's batches (the same seeded order as one process) split in disjoint halves; the
    next epoch reads another order. tests/test_slurm.py checks the same with two real SLURM tasks."""
    cfg = make_config("data=imagefolder", f"data.path={numbered_folder(tmp_path)}", "data.stream=true",
                      "data.image_size=8", "data.val_size=8", "data.workers=0")
    split = data.load(cfg.data).train

    def read(epoch, world=distributed.SINGLE):
        return [numbers(images) for images, _ in train.epoch_batches(split, 0, epoch, len(split), 8, 0, world)]

    one = read(0)
    halves = [read(0, distributed.World(rank, 2)) for rank in (0, 1)]
    assert len(one) == len(halves[0]) == len(halves[1]) == 4  # 48 images: 8 held out for test, 8 for val
    for whole, first, second in zip(one, *halves):
        assert len(first) == len(second) == 4 and sorted(first + second) == sorted(whole)
    assert len({n for batch in one for n in batch}) == 32 and read(1) != one


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
    with pytest.raises(ConfigError, match=r"data.workers=-1 is not allowed: expected an integer >= 0"):
        data.load(config(broken, "data.workers=-1").data)


def test_more_workers_than_cores_are_warned_of(folder, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    data.load(config(folder).data)
    assert "data.workers=2 decode on the 2 cores this process has" in caplog.text
    caplog.clear()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    data.load(config(folder).data)
    assert "data.workers" not in caplog.text


def test_imagefolder_streams_when_asked(folder):
    cfg = make_config("data=imagefolder", f"data.path={folder}", "data.stream=true", "data.image_size=28",
                      "data.val_size=12")
    assert stream.streams(cfg.data) and data.load(cfg.data).train.streamed
    auto = make_config("data=imagefolder", f"data.path={folder}", "data.stream=auto").data
    assert not stream.streams(auto)  # 120 small images fit in memory


def test_the_hubs_imagenet_layout_is_streamed_from_its_parquet_files(folder, tmp_path):
    """data.path=null reads data.hub_id through datasets: here a local copy of the files in the hub's layout, which
    datasets loads as it loads the hub's (without the hub). Rows are decoded by the workers, as files are."""
    from conftest import parquet_copy

    copy = parquet_copy(folder, tmp_path / "copy")
    dataset = data.load(config(tmp_path, f"data.hub_id={copy}", "data.path=null").data)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (108, 12, 30)
    assert dataset.train.streamed and not dataset.test.augment
    assert not data.needs_hub(config(copy, "data.path=null", f"data.hub_id={copy}").data)
    assert data.needs_hub(config(copy, "data.path=null").data)  # ILSVRC/imagenet-1k
    images, labels = next(dataset.test.batches(torch.arange(20, 30), 10))
    assert labels.tolist() == [2] * 10 and images[:, 2].float().mean() - images[:, :2].float().mean() > 80
    with pytest.raises(ConfigError, match=r"data.test_split='test'.*\['train', 'validation'\]"):
        data.load(config(tmp_path, f"data.hub_id={copy}", "data.path=null", "data.test_split=test").data)


def test_an_unreadable_row_is_named_and_an_unlabelled_split_refused(tmp_path):
    import datasets

    (tmp_path / "data").mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    good = (make_folder(tmp_path / "in", per_class=(2, 1)) / "val" / "n01" / "n01_0.JPEG").read_bytes()
    for split, label in (("train", 0), ("validation", 0), ("test", -1)):  # the hub's test split has no labels
        rows = {"image": [{"bytes": good, "path": None}] * 20 + [{"bytes": b"not a jpeg", "path": None}],
                "label": [label] * 21}
        datasets.Dataset.from_dict(rows, features).to_parquet(tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    test = data.load(config(tmp_path / "in", f"data.hub_id={tmp_path}", "data.path=null").data).test
    with pytest.raises(OSError, match="cannot read image row 20 of .*validation split"):
        list(test.batches(torch.arange(21), 21))
    with pytest.raises(ConfigError, match="test split is unlabelled"):
        data.load(config(tmp_path / "in", f"data.hub_id={tmp_path}", "data.path=null", "data.test_split=test").data)
