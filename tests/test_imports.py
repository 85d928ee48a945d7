"""The rules between src/'s packages (docs in README's "How the code fits together"): the model is plain PyTorch, the
data side and the model know nothing of training or serving, and nothing imports an entry point."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY_POINTS = {"train", "generate", "serve", "export", "tune"}
PACKAGES = {"data", "model", "generation", "checkpoints", "training", "serving", "tuning"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def src_imports() -> dict[str, set[str]]:
    """For each module of src/ (``src.model.gpt``), the src modules it imports (type-checking-only imports
    included), each as the module's full name."""
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "src":
                # `from src.x import y`: y may be a module of the package src.x, or a name defined in src.x
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "src"}
        graph[name] = found - {name}
    return graph


def package_of(module: str) -> str:
    """``model`` for ``src.model.gpt``, ``train`` for ``src.train``, ``src`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "src"


def imported_packages(of: str) -> set[str]:
    return {package_of(target) for module, targets in src_imports().items() if package_of(module) == of for target in
            targets} - {of}  # fmt: skip


def test_nothing_imports_an_entry_point():
    importers = {m: t for m, t in src_imports().items() for t in t if package_of(t) in ENTRY_POINTS}
    assert importers == {}


def test_the_model_imports_only_torch_and_errors():
    assert imported_packages("model") <= {"errors"}


def test_model_and_data_import_neither_training_nor_serving():
    assert imported_packages("data") <= {"errors"}
    assert not imported_packages("model") & {"training", "serving", "data"}


def test_generation_and_checkpoints_sit_below_training_and_serving():
    assert imported_packages("generation") <= {"model", "data", "errors"}
    assert imported_packages("checkpoints") <= {"model", "data", "errors", "src"}


def test_serving_never_imports_training():
    assert "training" not in imported_packages("serving")


def test_tuning_sits_on_training_and_nothing_below_imports_it():
    assert "serving" not in imported_packages("tuning")
    importers = {package_of(m) for m, targets in src_imports().items() for t in targets if package_of(t) == "tuning"}
    assert importers <= {"tuning", "tune"}


def test_no_two_modules_import_each_other():
    graph = src_imports()
    pairs = {tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, set())}
    assert not pairs


@pytest.mark.slow
def test_importing_the_model_loads_no_lightning():
    code = "import sys, src.model; print(any(m.startswith(('lightning', 'pytorch_lightning')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=SRC.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_graph_is_read():  # guards the tests above against a parser that finds nothing
    graph = src_imports()
    assert set(graph) >= {f"src.{p}" for p in PACKAGES | ENTRY_POINTS}
    assert "src.model.gpt" in graph["src.generation.decoding"] or "src.model" in graph["src.generation.decoding"]
    assert "src.checkpoints.load" in graph["src.generate"]
    assert imported_packages("training") >= {"model", "data", "checkpoints", "generation"}
