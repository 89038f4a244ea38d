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
    from vcon import config

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
