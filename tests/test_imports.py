"""The direction of dependence in src/: the model is a leaf, and no two modules import each other."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def src_imports() -> dict[str, set[str]]:
    """For each module of src/, the src modules it imports (type-checking-only imports included)."""
    graph = {}
    for path in SRC.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "src":  # from src import x
                    names |= {alias.name for alias in node.names}
                elif node.module.startswith("src."):
                    names.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("src.")}
        graph[path.stem] = {name for name in names if (SRC / f"{name}.py").exists()}
    return graph


def test_model_imports_only_errors_and_the_dropout_kernels():
    assert src_imports()["model"] <= {"errors", "dropout"}


def test_no_two_modules_import_each_other():
    graph = src_imports()
    pairs = {tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, set())}
    assert not pairs


def test_the_graph_is_read():  # guards the two tests above against a parser that finds nothing
    graph = src_imports()
    assert "decoding" in graph and "model" in graph["decoding"] and "checkpoint" in graph["generate"]
