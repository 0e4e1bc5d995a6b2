"""Your own templates and cards: folders named by templates.paths and catalog.paths (or their older names
render.template_paths and render.catalog_paths) are read alongside Loom's by `loom render` and its Ray
workers, `loom ingest`, `loom templates lint|stats|preview` and `loom catalog list`; an id or a name that
is already taken is refused naming both files."""
from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
import pytest

from catalog.cards import CARDS_DIR, use_card_folders
from jobs.cli import main
from pipelines.shapes_world.formats.samples import sample_entry
from templates.library import TASKS_DIR, use_template_folders

FRENCH = [("Que voit-on ici ? {{ question }}", "none"), ("Question : {{ question }} Réponse courte :", "short")]


@pytest.fixture(autouse=True)
def only_loom_s_own_afterwards():
    yield
    use_template_folders([])
    use_card_folders([])


def template_folder(folder, templates, task="vqa"):
    """A folder of the user's templates: one task file in the format of templates/tasks/."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'  - {{id: {tid}, lang: {lang}, brevity: {brevity}, prompt: "<image>\\n{prompt}"}}\n'
                    for tid, lang, brevity, prompt in templates)
    (folder / f"{task}.yaml").write_text(f'task: {task}\nresponse: "{{{{ answer }}}}"\ntemplates:\n{lines}',
                                         encoding="utf-8")
    return folder


def french(folder):
    return template_folder(folder, [(f"mine_fr_{k:02d}", "fr", brevity, prompt)
                                    for k, (prompt, brevity) in enumerate(FRENCH, 1)])


def card_folder(folder, name="vqa_zh_mine", lang="zh"):
    """A folder holding the user's card for a Chinese file in VQAv2's format, read by Loom's VQAv2 adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        name: {name}
        title: Our Chinese questions about COCO, in VQAv2's format
        tasks: [vqa]
        held: held-in
        lang: {lang}
        instructblip: {{short_answer: true}}
        splits: {{train: {{size: null, unit: questions}}}}
        native_format: {{name: VQA v2 JSON (questions + annotations)}}
        source: our annotators
        license: {{annotations: internal}}
        citation: none
        adapter: catalog.adapters.vqav2.read_vqav2
        """), encoding="utf-8")
    return folder


def write_config(path, datasets, sections=None, **render):
    """A render config; `sections` adds top-level ones (templates:, catalog:)."""
    config = {"render": {"ray": "never", "datasets": datasets, **render}, **(sections or {})}
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def refusal(tmp_path, capsys, datasets, sections=None, **render) -> str:
    """What `loom render` says on stderr when it refuses the config (exit 2) before any work."""
    config = write_config(tmp_path / "render.yaml", datasets, sections, **render)
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "render").exists()
    return capsys.readouterr().err


def rows_of(out):
    manifest = json.loads((out / "render" / "manifest.json").read_text())
    return manifest, [r for name in manifest["files"] for r in pq.read_table(out / "render" / name).to_pylist()]


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory):
    return sample_entry("vqav2", tmp_path_factory.mktemp("vqav2"))


def test_a_template_folder_gives_a_task_a_language_of_your_own(vqav2, tmp_path):
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}],
                          template_paths=[str(french(tmp_path / "mine"))], brevity={"vqav2": 0.5})
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    manifest, rows = rows_of(tmp_path / "run")
    assert {row["template_id"] for row in rows} == {"mine_fr_01", "mine_fr_02"} and {r["lang"] for r in rows} == {"fr"}
    assert manifest["brevity"]["00-vqav2-train"]["short"] == round(0.5 * len(rows) + 1e-9)
    assert all(row["messages"][0]["content"].startswith("<image>\nQue voit-on") for row in rows
               if row["template_id"] == "mine_fr_01")


def test_a_pinned_template_of_your_own_is_found_by_its_id(vqav2, tmp_path):
    mine = template_folder(tmp_path / "mine", [("mine_en_eval", "en", "none", "Answer from the picture: {{ question }}")])
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "template": "mine_en_eval"}], template_paths=[str(mine)])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    _, rows = rows_of(tmp_path / "run")
    assert rows and all(r["messages"][0]["content"].startswith("<image>\nAnswer from the picture: ") for r in rows)


def test_a_template_with_the_id_of_a_built_in_one_is_refused_naming_both_files(vqav2, tmp_path, capsys):
    mine = template_folder(tmp_path / "mine", [("vqa_en_03", "en", "none", "{{ question }}")])
    err = refusal(tmp_path, capsys, [vqav2], template_paths=[str(mine)])
    assert err.startswith("loom: config error: render.template_paths: template id 'vqa_en_03' is in both ")
    assert f"{TASKS_DIR / 'vqa.yaml'} and {mine.resolve() / 'vqa.yaml'}" in err


def test_a_template_folder_that_does_not_exist_is_named(vqav2, tmp_path, capsys):
    err = refusal(tmp_path, capsys, [vqav2], template_paths=[str(tmp_path / "nowhere")])
    assert f"render.template_paths: template folder {tmp_path / 'nowhere'}: no such folder" in err


def test_templates_stats_lint_and_preview_read_the_config_s_folders(vqav2, tmp_path, capsys):
    mine = french(tmp_path / "mine")
    template_folder(mine, [("mine_cap_en_01", "en", "none", "Describe it briefly.")], task="captioning")
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}], template_paths=[str(mine)])
    assert main(["templates", "stats", "--config", config]) == 0
    stats = capsys.readouterr().out
    assert any(line.split()[:4] == ["vqa", "fr", "2", "1/0/1"] for line in stats.splitlines())
    assert main(["templates", "lint", "--config", config]) == 1
    lint = capsys.readouterr().out
    assert "captioning: template mine_cap_en_01 is marked brevity none but its wording asks for a short answer" in lint
    assert "vqa: 2 short and open fr templates to draw from; expected 10-15" in lint
    assert main(["templates", "preview", "vqa", "--lang", "fr", "-n", "2", "--config", config]) == 0
    assert capsys.readouterr().out.count("(fr, brevity") == 2


def test_a_card_folder_adds_a_dataset_render_reads_through_its_adapter_in_its_language(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards")
    entry = {**vqav2, "card": "vqa_zh_mine"}
    config = write_config(tmp_path / "render.yaml", [entry], catalog_paths=[str(cards)])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    manifest, rows = rows_of(tmp_path / "run")
    assert {(r["dataset"], r["lang"]) for r in rows} == {("vqav2", "zh")}  # its adapter names the format
    assert all(r["template_id"].startswith("vqa_zh_") for r in rows)
    assert manifest["brevity"]["00-vqa_zh_mine-train"]["share_asked"] == {"short": 0.6, "long": 0.0}
    assert main(["catalog", "list", "--config", config, "--task", "vqa"]) == 0
    assert "vqa_zh_mine" in capsys.readouterr().out


def test_a_card_with_the_name_of_a_built_in_one_is_refused_naming_both_files(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards", name="vizwiz")
    err = refusal(tmp_path, capsys, [vqav2], catalog_paths=[str(cards)])
    assert err.startswith("loom: config error: render.catalog_paths: card 'vizwiz' is in both ")
    assert f"{CARDS_DIR.resolve() / 'vizwiz.yaml'} and {cards.resolve() / 'vizwiz.yaml'}" in err


def test_a_malformed_card_of_your_own_is_named_before_any_work(vqav2, tmp_path, capsys):
    cards = card_folder(tmp_path / "cards")
    (cards / "broken.yaml").write_text("name: broken\ntitle: no tasks\n")
    err = refusal(tmp_path, capsys, [vqav2], catalog_paths=[str(cards)])
    assert f"render.catalog_paths: {cards.resolve() / 'broken.yaml'}: missing field(s)" in err


def test_ray_workers_read_the_same_folders_as_a_render_here(vqav2, tmp_path):
    from jobs.render import run_render

    settings = {"datasets": [{**vqav2, "lang": "fr"}, {**vqav2, "card": "vqa_zh_mine"}], "part_records": 5}
    folders = {"templates": {"paths": [str(french(tmp_path / "mine"))]},
               "catalog": {"paths": [str(card_folder(tmp_path / "cards"))]}}
    here = run_render({"render": {**settings, "ray": "never"}, **folders}, tmp_path / "here", log=lambda *_: None)
    on_ray = run_render({"render": {**settings, "ray": "always"}, **folders}, tmp_path / "ray", log=lambda *_: None)
    assert on_ray["on_ray"] and on_ray["files"] == here["files"]
    assert rows_of(tmp_path / "ray")[1] == rows_of(tmp_path / "here")[1]
    assert {r["template_id"].rsplit("_", 1)[0] for r in rows_of(tmp_path / "ray")[1]} == {"mine_fr", "vqa_zh"}


# ---------------------------------------------------------------- templates.paths and catalog.paths


def test_top_level_templates_and_catalog_paths_are_what_render_reads(vqav2, tmp_path, capsys):
    sections = {"templates": {"paths": [str(french(tmp_path / "mine"))]},
                "catalog": {"paths": [str(card_folder(tmp_path / "cards"))]}}
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}, {**vqav2, "card": "vqa_zh_mine"}],
                          sections)
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    _, rows = rows_of(tmp_path / "run")
    assert {(r["lang"], r["template_id"].rsplit("_", 1)[0]) for r in rows} == {("fr", "mine_fr"), ("zh", "vqa_zh")}
    assert main(["catalog", "list", "--config", config, "--lang", "zh", "--kind", "dataset"]) == 0
    assert "vqa_zh_mine" in capsys.readouterr().out


def test_the_older_and_the_top_level_name_given_different_folders_are_refused(vqav2, tmp_path, capsys):
    mine, other = french(tmp_path / "mine"), french(tmp_path / "other")
    err = refusal(tmp_path, capsys, [vqav2], {"templates": {"paths": [str(mine)]}}, template_paths=[str(other)])
    assert err == (f"loom: config error: render.template_paths: ['{other}'] differs from templates.paths ['{mine}']; "
                   "expected the folders once, as templates.paths (render.template_paths is its older name)\n")


def test_the_same_folders_under_both_names_are_read_once(vqav2, tmp_path):
    mine = str(french(tmp_path / "mine"))
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}], {"templates": {"paths": [mine]}},
                          template_paths=[mine])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0


def test_the_older_name_is_read_where_the_top_level_section_gives_no_paths(vqav2, tmp_path):
    mine = str(french(tmp_path / "mine"))
    config = write_config(tmp_path / "render.yaml", [{**vqav2, "lang": "fr"}], {"templates": {}},
                          template_paths=[mine])
    assert main(["render", config, "--out", str(tmp_path / "run")]) == 0
    _, rows = rows_of(tmp_path / "run")
    assert {r["template_id"].rsplit("_", 1)[0] for r in rows} == {"mine_fr"}


def test_a_folder_list_that_is_not_a_list_is_one_schema_line(vqav2, tmp_path, capsys):
    err = refusal(tmp_path, capsys, [vqav2], {"catalog": {"paths": str(tmp_path)}})
    assert err.startswith("loom: config error: catalog.paths: ") and "expected a list" in err and err.count("\n") == 1


def test_a_missing_folder_is_named_under_the_key_the_config_gives(vqav2, tmp_path, capsys):
    err = refusal(tmp_path, capsys, [vqav2], {"templates": {"paths": [str(tmp_path / "nowhere")]}})
    assert err.startswith(f"loom: config error: templates.paths: template folder {tmp_path / 'nowhere'}: no such folder")


def pairs_card_folder(folder, name="our_alt_texts"):
    """A folder holding the user's caption-pair card: their URL lists' own column names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        name: {name}
        title: Our crawl's alt texts
        kind: pairs
        lang: en
        size: {{pairs: 3}}
        default_layout: ours
        layouts:
          ours: {{where: our crawler, format: parquet, url_col: image_link, caption_col: alt}}
        license: internal
        citation: none
        sources: [{{fact: the crawler writes image_link and alt, read_at: our wiki}}]
        """), encoding="utf-8")
    return folder


def test_ingest_reads_a_url_list_through_a_caption_pair_card_of_your_own(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.config import load_config
    from jobs.ingest import ingest_settings
    from pipelines.ingest.sources import Source, read_source

    urls = tmp_path / "crawl.parquet"
    pq.write_table(pa.table({"image_link": ["http://127.0.0.1:1/a.jpg", "http://127.0.0.1:1/b.jpg"],
                             "alt": ["a red circle", "two blue squares"]}), urls)
    config = tmp_path / "ingest.yaml"
    config.write_text(json.dumps({"ingest": {"sources": [{"card": "our_alt_texts", "path": str(urls)}]},
                                  "catalog": {"paths": [str(pairs_card_folder(tmp_path / "cards"))]}}))
    assert main(["config", "check", str(config)]) == 0
    cfg = ingest_settings(load_config(str(config), str(tmp_path / "run")))
    [source] = Source.from_config(cfg["sources"][0])
    assert read_source(source).column("caption").to_pylist() == ["a red circle", "two blue squares"]
    use_card_folders([])
    config.write_text(json.dumps({"ingest": {"sources": [{"card": "our_alt_texts", "path": str(urls)}]}}))
    assert main(["config", "check", str(config)]) == 2
    assert "ingest.sources[0].card: 'our_alt_texts' is not a card" in capsys.readouterr().err
