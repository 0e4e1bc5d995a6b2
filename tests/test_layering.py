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
