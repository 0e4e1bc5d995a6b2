"""Templates written by a hostile author: huge values, runaway loops, sandbox escapes. Each is refused
for the record at hand, by name, before the work is done; render drops that record and goes on, and
`loom templates lint` reports the template."""
from __future__ import annotations

import json
import shutil
import time
import tracemalloc

import pyarrow.parquet as pq
import pytest

from jobs.cli import main as loom
from jobs.render import run_render
from pipelines.render import dropped_counts, render_table
from pipelines.shapes_world.formats.vizwiz import write_vizwiz
from templates import library
from templates.library import InstructionTemplate, TemplateError, TemplateRefused

RECORD = {"id": "vqav2:12345", "dataset": "vqav2", "task": "vqa", "split": "train", "lang": "en",
          "image": {"path": "train2014/COCO_train2014_000000000042.jpg", "width": 640, "height": 480},
          "question": "What color is the circle?", "answer": "red", "answers": ["red"] * 10,
          "caption": "A red circle to the left of a blue square.", "choices": ["red", "blue", "green"]}
MiB = 2**20


def template(prompt: str, response: str = "{{ answer }}", template_id: str = "vqa_en_99") -> InstructionTemplate:
    return InstructionTemplate(template_id, "vqa", "en", "none", "<image>\n" + prompt, response)


def refusal(prompt: str, record: dict = RECORD) -> TemplateRefused:
    """The refusal of rendering `prompt` on `record`, which must come within a second."""
    started = time.perf_counter()
    with pytest.raises(TemplateRefused) as refused:
        template(prompt).render(record)
    seconds = time.perf_counter() - started
    assert seconds < 1.0, f"{prompt!r} took {seconds:.2f} s to refuse"
    return refused.value


def refusal_in_little_memory(prompt: str) -> TemplateRefused:
    """`refusal`, having allocated a few MiB at most on the way (traced, which slows it: no timing here)."""
    tracemalloc.start()
    try:
        with pytest.raises(TemplateRefused) as refused:
            template(prompt).render(RECORD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"{prompt!r} allocated {peak / MiB:.0f} MiB before refusing"
    return refused.value


@pytest.mark.parametrize("prompt", [
    "{{ 'a' * 10**10 }}",  # a constant: Jinja's compiler would fold it into a 10 GB string
    "{{ question * 10**8 }}",
    "{{ [question] * 10**9 }}",
    "{{ ['a' * 60000] * 60000 }}",  # each value under the bound, the list of them 3.6 GB as text
    "{{ 'a'|center(10**10) }}",
    "{{ 'a'.ljust(10**9) }}",
    "{{ '%10000000000s' % question }}",
    "{{ ('a' * 60000)|replace('', 'x' * 60000) }}",
    "{{ ('x' * 60000).join('a' * 60000) }}",
    "{{ question|indent(10**9) }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ range(10**12)|length }}",
    "{{ (question * 2000)|list|string|list|string|list|string|list|string }}",  # each 2-6 times the last
])
def test_a_value_past_the_bound_is_refused_before_it_is_built(prompt):
    err = refusal_in_little_memory(prompt)
    assert err.reason == "template_too_big" and err.over_limits
    detail, _, hint = str(err).partition("; templates are bounded")
    assert detail.startswith("template vqa_en_99, record vqav2:12345: ") and hint
    assert "65,536" in detail or "over 10,000 numbers" in detail
    assert refusal(prompt).reason == "template_too_big"  # and at once


def test_a_power_of_a_huge_number_is_refused_at_once():
    err = refusal("{{ (10**100000)**10000 }}")
    assert err.reason == "template_too_big" and "past 4,096 bits" in str(err)


@pytest.mark.parametrize("prompt", [
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% for a in question %}{% for b in question %}{% for c in question %}{% endfor %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
])
def test_loops_and_calls_stop_at_the_records_step_bound(prompt):
    err = refusal(prompt)
    # the step bound comes first (some ms); on a machine 10 times slower than this one the clock would
    assert err.reason == "template_too_slow"
    assert "over 10,000 loop turns and calls" in str(err) or "took over 250 ms" in str(err)


def test_work_that_stays_under_the_step_bound_stops_at_the_time_budget():
    # 5,000 turns, each sorting a list of 29,400 characters: some ten seconds unbounded
    err = refusal("{% for i in range(5000) %}{{ (caption * 700)|list|sort|length }}{% endfor %}")
    assert err.reason == "template_too_slow" and "took over 250 ms" in str(err)


def test_a_value_doubled_through_macro_arguments_is_refused_when_it_passes_the_bound():
    err = refusal("{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}"
                  "{% endmacro %}{{ f('a', 40) }}")
    assert err.reason == "template_too_big" and "passes macro f a value of over 65,536" in str(err)


def test_endless_recursion_is_refused_not_raised():
    err = refusal("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")
    assert err.reason == "template_too_slow" and "nested deeper than Python allows" in str(err)


def test_printing_a_field_again_and_again_is_cut_off():
    err = refusal_in_little_memory("{% for i in range(10000) %}{{ caption * 100 }}{% endfor %}")
    assert err.reason == "text_too_long" and "printed over 262,144 characters" in str(err)


def test_a_message_over_the_bound_is_refused_naming_the_template_and_the_record():
    long_question = {**RECORD, "question": "Is there a circle? " * 4000}  # 76,000 characters
    with pytest.raises(TemplateRefused) as refused:
        template("Question: {{ question }}", template_id="vqa_en_03").render(long_question)
    assert str(refused.value).startswith("template vqa_en_03, record vqav2:12345: rendered text over 65,536 "
                                         "characters (prompt 76,018, response 3); templates are bounded")
    assert refused.value.reason == "text_too_long"


@pytest.mark.parametrize("prompt", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ question.__class__ }}",
    "{{ '{0.__class__}'.format(question) }}",
    "{{ question.encode('utf-8') }}",
])
def test_a_sandbox_escape_is_a_refusal_naming_the_template_not_a_raw_security_error(prompt):
    err = refusal(prompt)
    assert isinstance(err, TemplateError) and err.reason == "template_unsafe"
    assert str(err).startswith("template vqa_en_99, record vqav2:12345: the sandbox refused: ")


def test_a_template_cannot_change_the_record_it_renders():
    record = {**RECORD, "choices": ["red", "blue"]}
    assert refusal("{{ choices.append('purple') }}", record).reason == "template_unsafe"
    assert record["choices"] == ["red", "blue"]


def test_any_other_error_on_a_record_is_a_refusal_too():
    err = refusal("{{ answer + 1 }}")
    assert err.reason == "template_failed" and not err.over_limits
    assert "TypeError: can only concatenate str" in str(err)


def test_the_bounds_leave_ordinary_template_code_alone():
    prompt = ("{% for c in choices %}{{ loop.index }}. {{ c|upper }} {% endfor %}{{ range(3)|join(',') }} "
              "{{ question.lower().replace('circle', 'disc') }} {{ '%-6s|' % answer }} {{ 'ab' * 3 }} {{ 2 ** 10 }}")
    prompt_text = template(prompt).render(RECORD)[0]["content"]
    assert prompt_text == ("<image>\n1. RED 2. BLUE 3. GREEN 0,1,2 what color is the disc? red   | ababab 1024")


def test_a_template_longer_than_the_bound_is_refused_with_its_file(tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    shutil.copytree(library.TASKS_DIR, folder)
    with open(folder / "vqa.yaml", "a") as f:
        f.write(f'  - {{id: vqa_en_98, lang: en, brevity: none, prompt: "<image>\\n{"Look. " * 700}{{{{ question }}}}"}}\n')
    monkeypatch.setattr(library, "TASKS_DIR", folder)
    library.reload_templates()
    try:
        with pytest.raises(TemplateError, match=r"vqa.yaml: templates\[\d+\] \(vqa_en_98\): prompt and response "
                                                r"are 4,23\d characters; at most 4,096"):
            library.load_task_templates("vqa")
    finally:
        library.reload_templates()


def test_render_table_drops_the_records_a_template_refuses_and_keeps_the_rest():
    records = [RECORD, {**RECORD, "id": "vqav2:2", "question": "Is there a circle? " * 4000},
               {**RECORD, "id": "vqav2:3", "question": "What is \ue000 this?"}, {**RECORD, "id": "vqav2:4"}]
    table = render_table(records, seed=0)
    assert table["id"].to_pylist() == ["vqav2:12345", "vqav2:4"]
    counts, examples = dropped_counts(table)
    assert counts == {"text_too_long": 1, "reserved_mark": 1}
    assert examples["reserved_mark"].startswith("template vqa_") and "record vqav2:3: its text holds U+E000" in \
        examples["reserved_mark"]


@pytest.fixture(scope="module")
def vizwiz(tmp_path_factory):
    return write_vizwiz(tmp_path_factory.mktemp("vizwiz"), seed=5, scenes=4)


def test_the_render_stage_drops_refused_records_into_its_manifest_and_finishes(vizwiz, tmp_path):
    annotations = json.loads(open(vizwiz["files"]["train"]).read())
    annotations[1]["question"] = "Is there a circle? " * 4000
    annotations[2]["question"] = "What is \ue000 this?"
    planted = tmp_path / "train.json"
    planted.write_text(json.dumps(annotations))
    entry = {"card": "vizwiz", "annotation_file": str(planted), "image_root": vizwiz["image_folders"]["train"]}
    logs = []
    manifest = run_render({"render": {"datasets": [entry], "ray": "never"}}, tmp_path / "run", log=logs.append)
    assert (manifest["rows_in"], manifest["rows_out"]) == (4, 2)
    assert manifest["dropped"] == {"reserved_mark": 1, "text_too_long": 1}
    assert ("record vizwiz:train:VizWiz_train_00000001: rendered text over 65,536 characters"
            in manifest["dropped_examples"]["text_too_long"])
    assert any("2 instruction records; dropped 1 as reserved_mark, 1 as text_too_long" in line for line in logs)
    rows = pq.read_table(tmp_path / "run" / "render" / manifest["files"][0]).to_pylist()
    assert [row["id"] for row in rows] == ["vizwiz:train:VizWiz_train_00000000", "vizwiz:train:VizWiz_train_00000003"]


def hostile_tasks(tmp_path, monkeypatch, additions: dict[str, str]):
    """The shipped templates with `additions` (task -> YAML lines) appended, as the templates render reads."""
    folder = tmp_path / "tasks"
    shutil.copytree(library.TASKS_DIR, folder)
    for task, lines in additions.items():
        with open(folder / f"{task}.yaml", "a") as f:
            f.write(lines)
    monkeypatch.setattr(library, "TASKS_DIR", folder)
    library.reload_templates()


def test_a_stage_pinned_to_a_hostile_template_drops_every_record_and_finishes(vizwiz, tmp_path, monkeypatch):
    hostile_tasks(tmp_path, monkeypatch, {"vqa": '  - {id: vqa_eval_99, lang: en, brevity: none, draw: false, '
                                                 'prompt: "<image>\\n{{ question * 10**10 }}"}\n'})
    try:
        entry = {"card": "vizwiz", "annotation_file": vizwiz["files"]["train"],
                 "image_root": vizwiz["image_folders"]["train"], "template": "vqa_eval_99"}
        manifest = run_render({"render": {"datasets": [entry], "ray": "never"}}, tmp_path / "run", log=lambda *_: None)
    finally:
        library.reload_templates()
    assert (manifest["rows_in"], manifest["rows_out"], manifest["dropped"]) == (4, 0, {"template_too_big": 4})


def test_lint_renders_every_template_under_the_bounds_and_names_each_that_cannot_render(tmp_path, monkeypatch,
                                                                                         capsys):
    hostile_tasks(tmp_path, monkeypatch, {
        "vqa": '  - {id: vqa_en_99, lang: en, brevity: none, prompt: "<image>\\n{{ \'a\' * 10**10 }}{{ question }}"}\n',
        "captioning": '  - {id: cap_eval_99, lang: en, brevity: none, draw: false, '
                      'prompt: "<image>\\n{{ (10**100000)**10000 }}"}\n',
        # a pinned evaluation prompt that fits no dataset: it cannot render anywhere
        "visual_reasoning": '  - {id: vr_eval_99, lang: en, brevity: none, draw: false, '
                            'prompt: "<image>\\nTrue or false: {{ statment }}"}\n',
        "knowledge_vqa": '  - {id: kvqa_eval_99, lang: en, brevity: none, draw: false, prompt: "<image>\\n'
                         '{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"}\n',
    })
    started = time.perf_counter()
    try:
        assert loom(["templates", "lint"]) == 1
    finally:
        library.reload_templates()
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  problem: ")]
    assert time.perf_counter() - started < 30
    assert any(p.startswith("  problem: vqa: template vqa_en_99 crosses render's bounds on vizwiz: template vqa_en_99, "
                            "record vizwiz:") and "10,000,000,000 times" in p
               for p in problems)
    assert any("captioning: template cap_eval_99 crosses render's bounds" in p and "past 4,096 bits" in p for p in problems)
    assert any("knowledge_vqa: template kvqa_eval_99 crosses render's bounds" in p for p in problems)
    assert any(p.startswith("  problem: visual_reasoning: pinned template vr_eval_99 renders no dataset of its task")
               and "'statment' is undefined" in p for p in problems)


def test_preview_shows_a_refused_record_with_its_reason_among_the_rendered_ones():
    from templates.authoring import preview
    from templates.chat import get_chat_format

    long_question = {**RECORD, "id": "vqav2:2", "question": "Is there a circle? " * 4000}
    shown = preview([RECORD, long_question], get_chat_format("llava_v1"))
    assert "What color is the circle?" in shown[0]
    assert shown[1].startswith("── vqav2:2: render drops it as 'text_too_long': template vqa_")
