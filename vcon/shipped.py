"""Where the package finds the folders it ships: ``conf`` (the Hydra configs) and ``sweeps`` (the ready sweeps); and
where other installed packages keep theirs (data and models shipped in a wheel)."""
import importlib.util
from pathlib import Path


def shipped(folder: str) -> Path:
    """``conf`` or ``sweeps``: the repository's top-level folder in a checkout (an editable install), the copy a
    wheel carries inside the package as ``vcon/_<folder>`` (pyproject.toml maps it there) in any other install. A
    plain path, as for the model assets: Hydra and ``from_pretrained`` read folders, not zip members."""
    packaged = Path(__file__).resolve().parent / f"_{folder}"
    return packaged if packaged.is_dir() else packaged.parents[1] / folder


CONF, SWEEPS = shipped("conf"), shipped("sweeps")


def package_folder(package: str) -> Path | None:
    """The folder of the installed top-level Python package ``package``, None when it is not installed. Found without
    importing it: none of its code runs (a dotted name would import its parents, so none is looked up)."""
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
