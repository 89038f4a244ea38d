"""Where the package finds the folders it ships: ``conf`` (the Hydra configs) and ``sweeps`` (the ready sweeps)."""
from pathlib import Path


def shipped(folder: str) -> Path:
    """``conf`` or ``sweeps``: the repository's top-level folder in a checkout (an editable install), the copy a
    wheel carries inside the package as ``vcon/_<folder>`` (pyproject.toml maps it there) in any other install. A
    plain path, as for the model assets: Hydra and ``from_pretrained`` read folders, not zip members."""
    packaged = Path(__file__).resolve().parent / f"_{folder}"
    return packaged if packaged.is_dir() else packaged.parents[1] / folder


CONF, SWEEPS = shipped("conf"), shipped("sweeps")
