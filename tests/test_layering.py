"""The layering DESIGN.md promises: a GPU box imports vlm/ with torch alone; pipelines/ never needs torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked}:
            raise ModuleNotFoundError('blocked for this test: ' + name, name=name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    script = BLOCK.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_vlm_imports_without_ray_polars_img2dataset_or_pipelines():
    # nor peft: only a LoRA stage imports it
    result = run_blocked({"ray", "polars", "img2dataset", "pipelines", "jobs", "webdataset", "pyarrow", "peft"}, """
        import vlm, vlm.model, vlm.train, vlm.evaluate, vlm.images, vlm.data, vlm.lora
        model = vlm.build_model("llava-1.5-tiny", vocab_size=64, image_token_id=4, pad_token_id=3)
        print(sum(p.numel() for p in model.parameters()))
    """)
    assert result.returncode == 0, result.stderr


def test_pipelines_import_without_torch():
    result = run_blocked({"torch"}, """
        import pipelines.manifest, pipelines.pack, pipelines.render, pipelines.tokenize
        import pipelines.tokenizer_training, pipelines.shapes_world
        import pipelines.pack_selection, pipelines.pack_window, pipelines.qformer_text, pipelines.tokenizer_sample
        import pipelines.ingest.filters, pipelines.ingest.dedup, pipelines.ingest.mix, pipelines.ingest.shards
        import pipelines.ingest.sources, pipelines.ingest.outcomes
        import catalog.adapters.coco_captions, catalog.adapters.vqav2, templates.library, templates.chat
        import catalog.adapters.okvqa, catalog.adapters.aokvqa, catalog.adapters.question_generation
        import catalog.adapters.gqa, catalog.adapters.vizwiz, catalog.adapters.textvqa, catalog.adapters.ocrvqa
        import catalog.adapters.hateful_memes, catalog.adapters.llava_instruct, catalog.adapters.scienceqa
        import catalog.adapters.vsr, pipelines.shapes_world.formats
    """)
    assert result.returncode == 0, result.stderr


def vlm_import_graph() -> dict[str, set[str]]:
    """Every vlm module and the vlm modules it imports, at module level or inside a function alike: an import
    deferred into a function still needs its module in place by the time it runs."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = {".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
             for path in (root / "vlm").rglob("*.py")}
    # `from vlm import build` reaches the module vlm/__init__.py names for it (its _LAZY table)
    init = ast.parse((root / "vlm" / "__init__.py").read_text())
    lazy = next(ast.literal_eval(node.value) for node in init.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_LAZY")
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from . import lora` imports the module vlm.lora; `from .model import build` the module vlm.model
                imported.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files
                                else f"vlm.{lazy[alias.name]}" if base == "vlm" and alias.name in lazy else base
                                for alias in node.names)
        graph[module] = {name for name in imported if name in files and name != module}
    return graph


def test_vlm_imports_nothing_in_a_circle():
    graph = vlm_import_graph()
    assert {"vlm.model", "vlm.checkpoint", "vlm.connectors.qformer"} <= set(graph)
    assert "vlm.checkpoint" in graph["vlm.export"]  # the parser sees function-level imports
    done, path = set(), []

    def visit(module):
        if module in path:
            circle = path[path.index(module):] + [module]
            raise AssertionError(f"vlm imports in a circle: {' -> '.join(circle)}")
        if module in done:
            return
        path.append(module)
        for name in sorted(graph[module]):
            visit(name)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


CATALOG_MAY_NOT_IMPORT = {"pipelines", "jobs", "templates", "vlm", "ray", "polars", "torch"}


def catalog_modules() -> list[str]:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return sorted(".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                  for path in (root / "catalog").rglob("*.py"))


def test_catalog_is_the_bottom_layer_every_module_imports_without_pipelines_jobs_or_templates():
    modules = catalog_modules()
    assert {"catalog.records", "catalog.video_frames", "catalog.adapters.pairs", "catalog.adapters.video_qa"} <= set(modules)
    result = run_blocked(CATALOG_MAY_NOT_IMPORT, "import importlib\n" + "".join(
        f"importlib.import_module({module!r})\n" for module in modules))
    assert result.returncode == 0, result.stderr


def test_catalog_names_no_upper_layer_even_in_an_import_inside_a_function():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for path in sorted((root / "catalog").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(root)}:{node.lineno} imports {name}" for name in names
                      if name.split(".")[0] in CATALOG_MAY_NOT_IMPORT]
    assert not found, found
