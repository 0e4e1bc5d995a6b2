"""Chat formats of the bundled architectures: each lays a conversation out as its reference code does."""
from __future__ import annotations

import pytest

from catalog.cards import TASKS, load_cards, select_cards
from pipelines.render import render_record
from pipelines.shapes_world.formats.samples import sample_records
from templates.chat import FORMATS_DIR, ChatFormat, get_chat_format

FORMATS = sorted(p.stem for p in FORMATS_DIR.glob("*.yaml"))
CONVERSATION = [{"role": "user", "content": "<image>\nWhat color is the triangle?"},
                {"role": "assistant", "content": "orange"},
                {"role": "user", "content": "What shape is blue?"},
                {"role": "assistant", "content": "star"}]
VICUNA_V0_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions.")

# name -> the whole text of CONVERSATION, as the reference code writes it (the source in each format's header)
EXPECTED = {
    # haotian-liu/LLaVA llava/conversation.py conv_vicuna_v1 (SeparatorStyle.TWO, sep " ", sep2 "</s>")
    "llava_v1": "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat color is the "
                "triangle? ASSISTANT: orange</s>USER: What shape is blue? ASSISTANT: star</s>",
    # haotian-liu/LLaVA llava/train/train.py: header system + "\n\n", turns "### Role: value\n", then "### "
    "llava_v0": f"<s>{VICUNA_V0_SYSTEM}\n\n### Human: <image>\nWhat color is the triangle?\n### Assistant: orange\n"
                "### Human: What shape is blue?\n### Assistant: star\n###",
    # haotian-liu/LLaVA llava/train/train.py preprocess_plain: image + answer + "\n" (the instruction dropped)
    "llava_plain": "<s><image>orange\nstar\n",
    # salesforce/LAVIS blip2_opt.py: prompt, answer + "\n", after OPT's BOS "</s>"
    "blip2_opt": "</s><image>What color is the triangle? orange\nWhat shape is blue? star\n",
    # salesforce/LAVIS blip2_vicuna_instruct.py: "</s>" as BOS, instruction, answer + eos "</s>"
    "instructblip_vicuna": "</s><image>What color is the triangle? orange</s>What shape is blue? star</s>",
    # salesforce/LAVIS blip2_t5.py / blip2_t5_instruct.py: encoder "<prompt></s>", decoder "<answer></s>"
    "blip2_flant5": "<image>What color is the triangle? orange</s>What shape is blue?</s> star</s>",
    "instructblip_flant5": "<image>What color is the triangle? orange</s>What shape is blue?</s> star</s>",
    # QwenLM/Qwen-VL finetune.py (ChatML) and tokenization_qwen.py from_list_format ("Picture 1: <img>..</img>\n")
    "qwen_vl_chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "Picture 1: <img><image></img>\nWhat color is the triangle?<|im_end|>\n<|im_start|>assistant\n"
                      "orange<|im_end|>\n<|im_start|>user\nWhat shape is blue?<|im_end|>\n<|im_start|>assistant\n"
                      "star<|im_end|>\n",
    # Qwen2-VL chat template: default system turn, "<|vision_start|><|image_pad|><|vision_end|>" then the text
    "qwen2_vl_chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                       "<|vision_start|><image><|vision_end|>What color is the triangle?<|im_end|>\n"
                       "<|im_start|>assistant\norange<|im_end|>\n<|im_start|>user\nWhat shape is blue?<|im_end|>\n"
                       "<|im_start|>assistant\nstar<|im_end|>\n",
    # Vision-CAIR/MiniGPT-4: "###Human: {} ###Assistant: " + answer + "###", image "<Img><ImageHere></Img> "
    "minigpt4": "<s>###Human: <Img><image></Img> What color is the triangle? ###Assistant: orange###"
                "Human: What shape is blue? ###Assistant: star###",
    # Vision-CAIR/MiniGPT-4 minigpt_base.py "[INST] " + "<Img><ImageHere></Img> {} " + "[/INST]", answer + "</s>"
    "minigpt_v2": "<s>[INST] <Img><image></Img> What color is the triangle? [/INST] orange</s>"
                  "[INST] What shape is blue? [/INST] star</s>",
}
# the trained-on text of CONVERSATION per format
TARGETS = {
    "llava_v1": ["orange", "</s>", "star", "</s>"],
    "llava_v0": ["orange", "\n###", "star", "\n###"],
    "llava_plain": ["orange", "\n", "star", "\n"],
    "blip2_opt": ["orange", "\n", "star", "\n"],
    "instructblip_vicuna": ["orange", "</s>", "star", "</s>"],
    "blip2_flant5": ["star", "</s>"],
    "instructblip_flant5": ["star", "</s>"],
    "qwen_vl_chatml": ["orange", "<|im_end|>\n", "star", "<|im_end|>\n"],
    "qwen2_vl_chatml": ["orange", "<|im_end|>\n", "star", "<|im_end|>\n"],
    "minigpt4": ["orange", "###", "star", "###"],
    "minigpt_v2": ["orange", "</s>", "star", "</s>"],
}


def text(fmt: ChatFormat, messages, **kw) -> str:
    return "".join(piece for piece, _ in fmt.pieces(messages, **kw))


def test_every_format_file_has_a_reference_layout():
    assert sorted(EXPECTED) == FORMATS


@pytest.mark.parametrize("name", FORMATS)
def test_a_two_turn_conversation_is_laid_out_as_the_reference_code_does(name):
    assert text(get_chat_format(name), CONVERSATION) == EXPECTED[name]


@pytest.mark.parametrize("name", FORMATS)
def test_only_the_answers_and_their_end_of_turn_are_trained_on(name):
    trained = [piece.strip(" ") for piece, target in get_chat_format(name).pieces(CONVERSATION) if target]
    assert trained == TARGETS[name]


@pytest.mark.parametrize("name", FORMATS)
def test_every_piece_starts_at_a_word_boundary(name):
    fmt = get_chat_format(name)
    pieces = fmt.pieces(CONVERSATION)
    specials = ("<", "[", "#", "\n", " ")
    for (before, _), (piece, _) in zip(pieces, pieces[1:]):
        # a piece opens with a space, newline, markup or "###", or follows whitespace, a special token or markup
        assert piece.startswith(specials) or before.endswith(("\n", " ", ">", "###", ":")) or before == fmt.bos, (before, piece)


def test_a_trailing_user_turn_is_a_prompt_that_ends_where_the_answer_starts():
    prompt = CONVERSATION[:1]
    assert text(get_chat_format("qwen_vl_chatml"), prompt).endswith("<|im_start|>assistant\n")
    assert text(get_chat_format("minigpt_v2"), prompt).endswith("[/INST]")
    assert text(get_chat_format("llava_v0"), prompt).endswith("### Assistant:")
    assert not any(target for _, target in get_chat_format("minigpt4").pieces(prompt))


def test_qwen_vl_numbers_its_pictures_across_the_conversation():
    fmt = get_chat_format("qwen_vl_chatml")
    messages = [{"role": "user", "content": "<image><image>\nWhich differs?"}, {"role": "assistant", "content": "none"},
                {"role": "user", "content": "<image>\nAnd now?"}]
    laid_out = text(fmt, messages)
    assert ("<|im_start|>user\nPicture 1: <img><image></img>\nPicture 2: <img><image></img>\nWhich differs?<|im_end|>"
            in laid_out)
    assert "<|im_start|>user\nPicture 3: <img><image></img>\nAnd now?<|im_end|>" in laid_out
    assert laid_out.count("<image>") == 3


def test_a_video_is_its_frames_each_written_as_an_image():
    video = [{"role": "user", "content": "<image>" * 4 + "\nWhich way does it move?"}]
    assert text(get_chat_format("qwen2_vl_chatml"), video).endswith(
        "<|im_start|>user\n" + "<|vision_start|><image><|vision_end|>" * 4
        + "Which way does it move?<|im_end|>\n<|im_start|>assistant\n")
    assert "<Img><image></Img>" * 4 + " Which way" in text(get_chat_format("minigpt4"), video)


def test_minigpt_v2_tags_the_first_user_turn_with_the_task_identifier():
    fmt = get_chat_format("minigpt_v2")
    assert text(fmt, CONVERSATION, task="vqa") == (
        "<s>[INST] <Img><image></Img> [vqa] What color is the triangle? [/INST] orange</s>"
        "[INST] What shape is blue? [/INST] star</s>")
    caption = [{"role": "user", "content": "<image>\nA short image caption:"}, {"role": "assistant", "content": "x"}]
    assert text(fmt, caption, task="captioning").startswith("<s>[INST] <Img><image></Img> [caption] A short image")
    assert text(fmt, caption, task="llava_instruct") == text(fmt, caption)  # LLaVA data carries no identifier
    assert all(target is False for piece, target in fmt.pieces(CONVERSATION, task="vqa") if "[vqa]" in piece)


def test_minigpt_v2_has_an_identifier_for_every_loom_task_and_refuses_an_unknown_one():
    fmt = get_chat_format("minigpt_v2")
    assert sorted(fmt.task_tags) == sorted(TASKS)
    assert set(fmt.task_tags.values()) <= {"", "[caption]", "[vqa]", "[grounding]", "[refer]", "[detection]",
                                           "[identify]"}
    with pytest.raises(ValueError, match="minigpt_v2: task 'vqa2' has no entry in task_tags"):
        fmt.pieces(CONVERSATION, task="vqa2")


def test_formats_without_task_tags_ignore_the_task():
    for name in FORMATS:
        fmt = get_chat_format(name)
        if not fmt.task_tags:
            assert fmt.pieces(CONVERSATION, task="vqa") == fmt.pieces(CONVERSATION)


@pytest.mark.parametrize("name", ["blip2_flant5", "instructblip_flant5"])
def test_flant5_splits_into_an_encoder_prefix_and_a_decoder_target(name):
    fmt = get_chat_format(name)
    assert fmt.encoder_decoder and not get_chat_format("blip2_opt").encoder_decoder
    pieces = fmt.pieces(CONVERSATION[:2])
    flags = [target for _, target in pieces]
    assert flags == sorted(flags)  # every encoder piece comes before every decoder piece
    encoder = "".join(p for p, target in pieces if not target)
    decoder = "".join(p for p, target in pieces if target)
    assert (encoder, decoder) == ("<image>What color is the triangle?</s>", " orange</s>")
    prompt = fmt.pieces(CONVERSATION[:3])  # earlier answers are encoder context; a prompt has no target
    assert not any(t for _, t in prompt) and "".join(p for p, _ in prompt).endswith("What shape is blue?</s>")


def test_an_image_mark_must_keep_the_image_token_once():
    with pytest.raises(ValueError, match="must contain '<image>' exactly once"):
        ChatFormat("bad", "", "", "", "", "{content}", "{content}", "", image="<img></img>")


def test_the_fixed_strings_include_the_image_marks_and_task_tags():
    assert get_chat_format("llava_v1").strings() == [
        get_chat_format("llava_v1").system, "USER:  ASSISTANT:", " "]
    assert "Picture 1: <img><image></img>\n" in get_chat_format("qwen_vl_chatml").strings()
    assert {"[vqa]", "[caption]"} <= set(get_chat_format("minigpt_v2").strings())


@pytest.fixture(scope="module")
def rendered_rows(tmp_path_factory):
    rows = []
    for card in sorted(select_cards(load_cards(), kind="dataset")):
        for record in sample_records(card, tmp_path_factory.mktemp(card), scenes=3):
            pinned = {"template_id": "vr_eval_statement"} if card == "vsr" else {}
            rows.append(render_record(record, seed=0, **pinned))
    return rows


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_lays_out_a_rendered_record_of_every_dataset(name, rendered_rows):
    fmt = get_chat_format(name)
    assert len({row["dataset"] for row in rendered_rows}) == 26
    for row in rendered_rows:
        pieces = fmt.pieces(row["messages"], task=row["task"])
        laid_out = "".join(piece for piece, _ in pieces)
        assert laid_out.count("<image>") == len(row["images"]), (name, row["id"])
        assert any(target for _, target in pieces), (name, row["id"])
        assert row["messages"][-1]["content"] in "".join(piece for piece, target in pieces if target)


# ---------------------------------------------------------------------------------------------
# The same layout as a Hugging Face chat template (what `loom export` writes beside a model)
# ---------------------------------------------------------------------------------------------

def apply_template(fmt: ChatFormat, messages, **kw) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=fmt.jinja(**kw), add_generation_prompt=True)
    return rendered[0]


@pytest.mark.parametrize("name", FORMATS)
def test_the_chat_template_writes_what_pieces_lay_out_for_every_dataset(name, rendered_rows):
    fmt = get_chat_format(name)
    conversations = [CONVERSATION, CONVERSATION[:1], [{"role": "user", "content": "<image><image>\nWhich differs?"}],
                     [{"role": "user", "content": "end <image>"}]] + [row["messages"] for row in rendered_rows]
    for messages in conversations:
        assert apply_template(fmt, messages) == text(fmt, messages), (name, messages)


@pytest.mark.parametrize("name", FORMATS)
def test_the_chat_template_reads_transformers_image_and_text_items_as_an_image_run_then_the_text(name):
    fmt = get_chat_format(name)
    items = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "the left"}]}]
    loom = [{"role": "user", "content": "<image><image>\nWhich?"}, {"role": "assistant", "content": "the left"}]
    assert apply_template(fmt, items) == text(fmt, loom)


def test_the_chat_template_can_write_each_image_as_its_visual_tokens():
    """BLIP-2's export: the 32 query tokens written where Loom trains them, after BOS."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    assert apply_template(get_chat_format("blip2_opt"), messages, image_placeholder="<image>" * 3) == (
        "</s><image><image><image>What colour?")


def test_the_chat_template_refuses_a_role_the_format_has_no_place_for():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="role 'system': llava_v1 lays out user and assistant turns only"):
        apply_template(get_chat_format("llava_v1"), [{"role": "system", "content": "Be brief."}])
