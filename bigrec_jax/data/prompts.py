"""The prompt format: the only place that knows BIGRec's prompt templates and answer format.

Training, generation, constrained decoding and grounding all build text through `PromptFormat`,
so the prompt a model is trained on is byte-for-byte the prompt it is asked at generation time
(the reference had one space after "request." in train.py and two in inference.py; we keep one).

Two templates (`data.prompt_template`), the same three fields in each:
- "alpaca" (the reference): the Alpaca header, `### Instruction:` / `### Input:` / `### Response:`;
- "chatml": the chat format SmolLM2-Instruct was tuned on (its GGUF's `tokenizer.chat_template`
  rendered for one user turn, with that template's default system line), instruction and input as
  the user's message, the quoted title as the assistant's answer (EOS `<|im_end|>` ends it).
The answer is one quoted title, `"Title"`: its second `"` is the stop rule of
`generate.stop_at_closing_quote`, and `parse` reads a generation back.

A row is rendered from its `history_item_ids` / `target_item_id` and the catalog's titles when
the titles are given (training and generation over prepared files), else from its stored
`instruction` / `input` / `output` text: a new format works on an existing prepared directory.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

HEADER = ("Below is an instruction that describes a task, paired with an input that provides "
          "further context. Write a response that appropriately completes the request. \n\n")
RESPONSE_MARKER = "### Response:\n"
CHATML_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                 "Hugging Face<|im_end|>\n")
CHATML_RESPONSE_MARKER = "<|im_start|>assistant\n"
TEMPLATES = ("alpaca", "chatml")

INSTRUCTIONS: dict[str, str] = {
    "movie": ("Given a list of movies the user has watched before, please recommend a new movie "
              "that the user likes to the user."),
    "game": ("Given a list of video games the user has played before, please recommend a new "
             "video game that the user likes to the user."),
}
INPUT_PREFIXES: dict[str, str] = {
    "movie": "The user has watched the following movies before:",
    "game": "The user has played the following video games before:",
}
DOMAINS = tuple(INSTRUCTIONS)


def check_domain(domain: str) -> str:
  if domain not in INSTRUCTIONS:
    raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
  return domain


def quote(title: str) -> str:
  """A title as it appears in prompts and as the target output: `"Title"`."""
  return f'"{title}"'


def unquote(text: str) -> str:
  """Inverse of `quote` for grounding: strips surrounding spaces and double quotes."""
  return text.strip().strip('"').strip()


def single_title(text: str) -> str | None:
  """The title if `text` is exactly one quoted title (the trained answer format), else None."""
  text = text.strip()
  if len(text) < 3 or text[0] != '"' or text[-1] != '"' or '"' in text[1:-1]:
    return None
  title = text[1:-1].strip()
  return title or None


def format_history(titles: Sequence[str]) -> str:
  """`"T1", "T2", ...` (no trailing separator)."""
  return ", ".join(quote(t) for t in titles)


def instruction_for(domain: str) -> str:
  return INSTRUCTIONS[check_domain(domain)]


def input_for(domain: str, history_titles: Sequence[str]) -> str:
  """The input field: prefix, quoted history, then newline and one space (reference format)."""
  return f"{INPUT_PREFIXES[check_domain(domain)]}{format_history(history_titles)}\n "


def make_fields(domain: str, history_titles: Sequence[str], target_title: str) -> dict[str, str]:
  """The three reference fields of one example row."""
  return {"instruction": instruction_for(domain), "input": input_for(domain, history_titles),
          "output": quote(target_title)}


def check_template(template: str) -> str:
  if template not in TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")
  return template


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """Template and answer format, built from the config by `format_of` (recorded by the stages)."""
  template: str = "alpaca"
  domain: str = "movie"  # wording of the trie's context; a row's own `domain` words its prompt
  closing_quotes = 2  # `"Title"`: the second `"` of a generated answer closes it (stop rule)

  def __post_init__(self):
    check_template(self.template)
    check_domain(self.domain)

  def fields(self, row: Mapping[str, Any], titles: Sequence[str] | None = None) -> tuple[str, str]:
    """(instruction, input): from the row's ids and `titles` when given, else its stored text."""
    if titles is None or "history_item_ids" not in row:
      return row["instruction"], row["input"]
    domain = row.get("domain", self.domain)
    return (instruction_for(domain),
            input_for(domain, [titles[i] for i in row["history_item_ids"]]))

  def prompt(self, row: Mapping[str, Any], titles: Sequence[str] | None = None) -> str:
    """The text a model sees before it answers, ending with `response_marker`."""
    instruction, history = self.fields(row, titles)
    if self.template == "chatml":
      return (f"{CHATML_SYSTEM}<|im_start|>user\n{instruction}\n{history.rstrip()}"
              f"<|im_end|>\n{CHATML_RESPONSE_MARKER}")
    return (f"{HEADER}### Instruction:\n{instruction}\n\n"
            f"### Input:\n{history}\n\n{RESPONSE_MARKER}")

  def target(self, row: Mapping[str, Any], titles: Sequence[str] | None = None) -> str:
    """The answer trained on: the target's quoted title (the row's `output` without titles)."""
    if titles is None or "target_item_id" not in row:
      return row["output"]
    return quote(titles[row["target_item_id"]])

  def full_text(self, row: Mapping[str, Any], titles: Sequence[str] | None = None) -> str:
    """Prompt plus the target: the training text (EOS is added by the tokenizer step)."""
    return self.prompt(row, titles) + self.target(row, titles)

  @property
  def response_marker(self) -> str:
    """What every prompt ends with: the model's answer starts right after it."""
    return RESPONSE_MARKER if self.template == "alpaca" else CHATML_RESPONSE_MARKER

  @property
  def decoded_split(self) -> str:
    """Where a decoded prompt + generation (special tokens skipped) is split, the answer after
    it: the reference splits at `Response:\\n`; ChatML's role tags are special tokens, so its
    marker decodes to `assistant\\n` (the system line's "assistant named" never matches)."""
    return "Response:\n" if self.template == "alpaca" else "assistant\n"

  def trie_context(self) -> str:
    """A prompt ending at the response marker, the context a target title is tokenized in."""
    return self.prompt({"instruction": instruction_for(self.domain),
                        "input": input_for(self.domain, ["Title"])})

  def history_free_prompt(self) -> str:
    """The prompt of a user with no history (the model's catalog prior, generate/prior.py)."""
    return self.prompt({"instruction": instruction_for(self.domain),
                        "input": input_for(self.domain, [])})

  def response_of(self, text: str) -> str:
    """The part of a prompt + answer text after the last response marker (the prediction)."""
    i = text.rfind(self.response_marker)
    return text if i < 0 else text[i + len(self.response_marker):]

  @staticmethod
  def after_answer(generated: str) -> str:
    """What a generation has after the `"` that closes its title ("" before that quote)."""
    first = generated.find('"')
    second = generated.find('"', first + 1) if first >= 0 else -1
    return "" if second < 0 else generated[second + 1:]

  answer = staticmethod(quote)  # a title as the model answers it
  parse = staticmethod(single_title)  # a generation's title when it is one quoted title

  def record(self) -> dict[str, Any]:
    return {"template": self.template, "domain": self.domain, "answer": quote("Title")}


def format_of(data_config: Any, domain: str = "movie") -> PromptFormat:
  """The prompt format of a config's `data` section (the one place it is built from config)."""
  return PromptFormat(data_config.prompt_template, domain)


def prompt_for(row: Mapping[str, str], template: str = "alpaca") -> str:
  """`PromptFormat(template).prompt(row)`: the row's stored text in a template."""
  return PromptFormat(template).prompt(row)


def full_text(row: Mapping[str, str], template: str = "alpaca") -> str:
  return PromptFormat(template).full_text(row)
