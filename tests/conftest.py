import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Debian's dataset-fashion-mnist; VCON_FASHION_MNIST names another folder of its IDX files (a GPU machine without it)
FASHION_MNIST_ROOT = Path(os.environ.get("VCON_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST = FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz"

# Tests never wait for the hub: the ones about an unreachable hub set their own environment.
os.environ.setdefault("HF_HOME", str(ROOT / ".pytest_cache" / "hf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

# A quick run of the real default config: the shipped vit-micro on a slice of Fashion-MNIST.
QUICK = ["data.train_size=512", "data.val_size=256", "data.test_size=512", "train.epochs=2", "train.batch_size=64",
         "vcon.epochs=1", "train.log_every=1", "tracking.wandb.mode=disabled"]


def make_config(*overrides: str):
    """The real config tree composed by Hydra, as run.py would, with these overrides."""
    from vcon.app import config

    config.register()  # the ${asset:...} and ${run_id:} resolvers, the schemas, the sweeps

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def config():
    return make_config


requires_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists(),
                                            reason="apt-get install dataset-fashion-mnist")


def run_py(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300):
    import subprocess

    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


COLOURS = {"n01": (200, 40, 40), "n02": (40, 200, 40), "n03": (40, 40, 200)}


def make_folder(root, per_class=(40, 10), size=(48, 40)):
    """An ImageNet-layout folder, train/ and val/, with a class per dominant colour: noisy JPEGs of varied size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for wnid, colour in COLOURS.items():
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                w, h = size[0] + i % 7, size[1] + i % 5
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


def numbered_folder(root, classes=2, per_class=24):
    """train/<class>/ of solid-colour PNGs whose colour is their number (red + 256 x green): every crop, flip and
    resize of one reads back as that number, so a test sees which images a streamed run read."""
    from PIL import Image

    for number in range(classes * per_class):
        folder = root / "train" / f"c{number // per_class}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{number}-é.png"  # non-ASCII names are read too
        Image.new("RGB", (20 + number % 5, 18), (number % 256, number // 256, 99)).save(folder / name)
    return root


def numbers(images):
    """The numbers of a batch of ``numbered_folder``'s images (each must have come through whole)."""
    assert (images == images[:, :, :1, :1]).all(), "an image is not one solid colour"
    return (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()


def parquet_copy(folder, root):
    """A local copy of a hub image dataset, as the hub keeps ILSVRC/imagenet-1k: data/<split>-00000-of-00001.parquet
    with the images' bytes and class labels, made from an ImageNet-layout ``folder`` (its val/ as "validation")."""
    import datasets

    classes = sorted(p.name for p in (folder / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    (root / "data").mkdir(parents=True)
    for split, name in (("train", "train"), ("val", "validation")):
        files = sorted((folder / split).glob("*/*"))
        table = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                                            "label": [classes.index(f.parent.name) for f in files]}, features)
        table.to_parquet(root / "data" / f"{name}-00000-of-00001.parquet")
    return root


def tiny_vit(layers: int = 3):
    """A ViT of ``layers`` blocks, hidden 32, on 16 px grey images: the unit tests' model (seeded)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                               intermediate_size=64, image_size=16, patch_size=4, num_channels=1,
                                               num_labels=4))


def tiny_bert():
    """A two-block BERT, hidden 32, vocabulary 50, three labels (seeded)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=3))
