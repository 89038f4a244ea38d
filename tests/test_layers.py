"""The package's layers: each module imports only from its own layer or the ones below it, the library core imports
neither Hydra nor the app side, and no two modules import each other, however indirectly (read from the source, as
``../shared/tools/structure.py`` reads it: lazy imports count)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vcon"

# Lowest first. A module's layer is that of the longest prefix of its name listed here.
LAYERS = [
    ("foundation", ["vcon.errors", "vcon.schema", "vcon.atomic", "vcon.hub", "vcon.shipped", "vcon.layers"]),
    ("schedule, methods, distillation", ["vcon.schedule", "vcon.method", "vcon.distill"]),
    ("compressions", ["vcon.compression"]),
    ("the verb", ["vcon.core"]),
    ("inputs and integrations", ["vcon.data", "vcon.model", "vcon.export", "vcon.hf"]),
    ("training", ["vcon.train"]),
    ("the Hydra app", ["vcon.app"]),
]
# the library: torch only, no Hydra, no OmegaConf
LIBRARY = ("foundation", "schedule, methods, distillation", "compressions", "the verb")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module name ``name`` imports, at any depth of the file (``from pkg import sub`` imports the submodule;
    ``from pkg import name``, the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return out


def layer(name: str) -> int | None:
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if name == p or name.startswith(p + ".")), default=None)
    return None if best is None else best[1]


def own(names: set[str], known: dict[str, Path]) -> set[str]:
    return {n for n in names if n in known}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "vcon" and layer(m) is None]
    assert not unplaced, f"modules in no layer of tests/test_layers.py: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    known = modules()
    upward = [f"{m} ({LAYERS[layer(m)][0]}) -> {t} ({LAYERS[layer(t)][0]})"
              for m, path in known.items() if m != "vcon"
              for t in sorted(own(imported(m, path, known), known)) if t != "vcon" and layer(t) > layer(m)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_library_imports_neither_hydra_nor_omegaconf():
    known = modules()
    found = [f"{m} -> {t}" for m, path in known.items() if m != "vcon" and LAYERS[layer(m)][0] in LIBRARY
             for t in sorted(imported(m, path, known)) if t.split(".")[0] in ("hydra", "omegaconf")]
    assert not found, found


def test_no_import_circle():
    known = modules()
    graph = {m: own(imported(m, p, known), known) - {m, "vcon"} for m, p in known.items()}

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and not seen.add(n) and reaches(n, b, seen)) for n in graph[a])

    circles = [m for m in graph if m != "vcon" and reaches(m, m, set())]
    assert not circles, f"modules on an import circle: {circles}"
