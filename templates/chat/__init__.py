"""Chat formats: how a conversation is laid out as text for one architecture's LLM."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

FORMATS_DIR = Path(__file__).parent
IMAGE_MARK = "<image>"
# a run of image marks as render writes them, with the newline that separates them from the text
_IMAGE_RUN = re.compile(r"(?:<image>)+\n?")


@dataclass(frozen=True)
class ChatFormat:
    """The text pieces of a conversation, each marked as trained on or not.

    Each piece starts at a word boundary, so tokenizing piece by piece gives the same ids
    as tokenizing the whole text: the prompt used at evaluation matches training exactly.

    Records mark images as "<image>" (a run of them, then a newline, then the text). A format
    writes each mark as `image`, which keeps "<image>" exactly once where the visual tokens go
    (so the tokenize stage still finds it) and may number images with "{n}" (1-based, in order
    across the whole conversation, the order of the record's `images`); `after_images` replaces
    the newline that closes a run. `user` may use "{images}" instead of "{content}" to keep a
    turn's image marks and drop its text (LLaVA's caption pretraining does).

    `task_tags` (optional) maps a Loom task id to a tag written at the start of the first user
    turn's text, after its images ("" for none); `pieces(messages, task=...)` applies it.

    With `encoder_decoder`, the pieces marked False are the encoder input and those marked True
    the decoder target: the last answer is the target, earlier turns are context for the
    encoder, and the encoder input ends with `eos`, as a T5 tokenizer ends every sequence.
    """

    name: str
    bos: str
    eos: str
    system: str
    system_suffix: str
    user: str
    assistant: str
    end_of_turn: str
    image: str = IMAGE_MARK
    after_images: str = "\n"
    task_tags: dict[str, str] | None = field(default=None, hash=False)
    encoder_decoder: bool = False

    def __post_init__(self):
        if self.image.count(IMAGE_MARK) != 1:
            raise ValueError(f"chat format {self.name}: image {self.image!r} must contain {IMAGE_MARK!r} exactly once, "
                             "where the visual tokens go")

    def pieces(self, messages: list[dict], task: str | None = None) -> list[tuple[str, bool]]:
        """(text, is_target) pieces for a conversation; a trailing user turn leaves the assistant to answer.

        `task` (a Loom task id such as "vqa") selects the format's task tag, if it has any."""
        tag = self._tag(task)
        # an encoder-decoder's one target: the answer that ends the conversation (none in a prompt)
        last_answer = len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else -1
        out: list[tuple[str, bool]] = [(self.bos, False)]
        if self.system:
            out.append((self.system + self.system_suffix, False))
        images_seen = 0
        first_user = True
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "user":
                text, marks, images_seen = self._lay_out(content, images_seen, tag if first_user else "")
                first_user = False
                out.append((self.user.format(content=text, images=marks), False))
            elif role == "assistant":
                target = not self.encoder_decoder or i == last_answer
                if self.encoder_decoder and target:
                    out.append((self.eos, False))  # the encoder input ends here; the decoder target follows
                out.append((self.assistant.format(content=content), target))
                out.append((self.end_of_turn, target))
            else:
                raise ValueError(f"message {i}: role {role!r}; expected 'user' or 'assistant'")
        if self.encoder_decoder and last_answer < 0:
            out.append((self.eos, False))  # a prompt: the whole conversation is the encoder input
        return [(text, target) for text, target in out if text]

    def _tag(self, task: str | None) -> str:
        if task is None or not self.task_tags:
            return ""
        if task not in self.task_tags:
            raise ValueError(f"chat format {self.name}: task {task!r} has no entry in task_tags; "
                             f"known: {sorted(self.task_tags)}")
        return self.task_tags[task]

    def _lay_out(self, content: str, images_seen: int, tag: str) -> tuple[str, str, int]:
        """(the turn's text with images written in this format, its image marks alone, images seen so far)."""
        marks: list[str] = []

        def write(run: re.Match) -> str:
            nonlocal images_seen
            written = ""
            for _ in range(run.group().count(IMAGE_MARK)):
                images_seen += 1
                written += self.image.replace("{n}", str(images_seen))
            marks.append(written)
            return written + (self.after_images if run.group().endswith("\n") else "")

        leading = _IMAGE_RUN.match(content)  # the images that open the turn: a task tag goes after them
        head, rest = (content[:leading.end()], content[leading.end():]) if leading else ("", content)
        head, rest = _IMAGE_RUN.sub(write, head), _IMAGE_RUN.sub(write, rest)
        return head + (tag + " " if tag else "") + rest, "".join(marks), images_seen

    def jinja(self, image_placeholder: str = IMAGE_MARK) -> str:
        """This layout as a Hugging Face chat template (Jinja): `apply_chat_template(messages)` writes the text
        `pieces(messages)` joins, without a task tag (transformers has no task). A message's content is Loom's
        string ("<image>" marks, a newline after a run) or transformers' list of {"type": "image"} and
        {"type": "text", "text": ...} items (a run of images followed by text is written as "<image>...\\n").
        The user turn already opens the answer, so add_generation_prompt adds nothing; a role other than user
        and assistant is refused, as `pieces` refuses it. `image_placeholder` is what each "<image>" becomes:
        the processor's own placeholder, or (BLIP-2's processors, which would put the queries before BOS)
        the visual tokens written out."""

        def literal(text: str) -> str:
            return "{{- " + json.dumps(text, ensure_ascii=False) + " -}}"

        def turn(template: str) -> str:  # literal parts around {content} / {images}
            return "".join({"{content}": "{{- ns.text -}}", "{images}": "{{- ns.marks -}}"}.get(part) or literal(part)
                           for part in re.split(r"(\{content\}|\{images\})", template) if part)

        image = json.dumps(self.image.replace(IMAGE_MARK, image_placeholder), ensure_ascii=False)
        after_images = json.dumps(self.after_images, ensure_ascii=False)
        return "".join([
            "{%- set ns = namespace(images=0, text='', marks='', run='', content='') -%}",
            literal(self.bos),
            literal(self.system + self.system_suffix) if self.system else "",
            "{%- for message in messages -%}",
            # the content as one string: Loom's, or transformers' items with "\n" closing a run of images
            "{%- if message['content'] is string -%}{%- set ns.content = message['content'] -%}",
            "{%- else -%}{%- set ns.content = '' -%}{%- for item in message['content'] -%}",
            "{%- if item['type'] == 'image' -%}{%- set ns.content = ns.content + '<image>' -%}",
            "{%- elif item['type'] == 'text' -%}",
            "{%- if ns.content.endswith('<image>') -%}{%- set ns.content = ns.content + '\\n' -%}{%- endif -%}",
            "{%- set ns.content = ns.content + item['text'] -%}{%- endif -%}{%- endfor -%}{%- endif -%}",
            "{%- if message['role'] == 'user' -%}",
            # each image mark in this format's words, numbered across the conversation; a run's newline
            # becomes after_images
            "{%- set parts = ns.content.split('<image>') -%}",
            "{%- set ns.text = parts[0] -%}{%- set ns.marks = '' -%}{%- set ns.run = '' -%}",
            "{%- for part in parts[1:] -%}{%- set ns.images = ns.images + 1 -%}",
            "{%- set ns.run = ns.run + " + image + ".replace('{n}', ns.images | string) -%}",
            "{%- if part or loop.last -%}{%- set ns.text = ns.text + ns.run -%}",
            "{%- set ns.marks = ns.marks + ns.run -%}{%- set ns.run = '' -%}",
            "{%- if part.startswith('\\n') -%}{%- set ns.text = ns.text + " + after_images + " + part[1:] -%}",
            "{%- else -%}{%- set ns.text = ns.text + part -%}{%- endif -%}{%- endif -%}{%- endfor -%}",
            turn(self.user),
            "{%- elif message['role'] == 'assistant' -%}{%- set ns.text = ns.content -%}",
            # an encoder-decoder's encoder input ends before the answer that ends the conversation
            ("{%- if loop.last -%}" + literal(self.eos) + "{%- endif -%}") if self.encoder_decoder else "",
            turn(self.assistant), literal(self.end_of_turn),
            "{%- else -%}{{- raise_exception(\"role '\" + message['role'] + \"': " + self.name
            + " lays out user and assistant turns only\") -}}",
            "{%- endif -%}{%- endfor -%}",
            ("{%- if messages and messages[-1]['role'] != 'assistant' -%}" + literal(self.eos) + "{%- endif -%}")
            if self.encoder_decoder else "",
        ])

    def strings(self) -> list[str]:
        """Every fixed string of the format, for training a tokenizer that knows them."""
        fixed = [self.system, self.user.format(content="", images=""), self.assistant.format(content="")]
        if self.image != IMAGE_MARK:
            fixed.append(self.image.replace("{n}", "1"))
        if self.task_tags:
            fixed.extend(sorted({tag for tag in self.task_tags.values() if tag}))
        return fixed


@lru_cache(maxsize=None)
def get_chat_format(name: str) -> ChatFormat:
    path = FORMATS_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in FORMATS_DIR.glob("*.yaml"))
        raise ValueError(f"unknown chat format {name!r}; known: {known}")
    return ChatFormat(**yaml.safe_load(path.read_text()))
