"""The prompt builder: the only place that knows BIGRec's prompt templates.

Training, generation, constrained decoding and grounding all build text through this module, so
the prompt a model is trained on is byte-for-byte the prompt it is asked at generation time
(the reference had one space after "request." in train.py and two in inference.py; we keep one).

Two templates (`data.prompt_template`), the same three fields in each:
- "alpaca" (the reference): the Alpaca header, `### Instruction:` / `### Input:` / `### Response:`;
- "chatml": the chat format SmolLM2-Instruct was tuned on (its GGUF's `tokenizer.chat_template`
  rendered for one user turn, with that template's default system line), instruction and input as
  the user's message, the quoted title as the assistant's answer (EOS `<|im_end|>` ends it).
"""
from __future__ import annotations

from typing import Mapping, Sequence

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


def response_marker(template: str = "alpaca") -> str:
  """What every prompt of the template ends with: the model's answer starts right after it."""
  return RESPONSE_MARKER if check_template(template) == "alpaca" else CHATML_RESPONSE_MARKER


def decoded_response_split(template: str = "alpaca") -> str:
  """Where a decoded prompt + generation (special tokens skipped) is split, the answer after it:
  the reference splits at `Response:\\n`; ChatML's role tags are special tokens, so its marker
  decodes to `assistant\\n` (the system line's "assistant named" never matches)."""
  return "Response:\n" if check_template(template) == "alpaca" else "assistant\n"


def prompt_for(row: Mapping[str, str], template: str = "alpaca") -> str:
  """The text a model sees before it answers, ending with `response_marker(template)`."""
  if check_template(template) == "chatml":
    return (f"{CHATML_SYSTEM}<|im_start|>user\n{row['instruction']}\n{row['input'].rstrip()}"
            f"<|im_end|>\n{CHATML_RESPONSE_MARKER}")
  return (f"{HEADER}### Instruction:\n{row['instruction']}\n\n"
          f"### Input:\n{row['input']}\n\n{RESPONSE_MARKER}")


def full_text(row: Mapping[str, str], template: str = "alpaca") -> str:
  """Prompt plus the target output: the training text (EOS is added by the tokenizer step)."""
  return prompt_for(row, template) + row["output"]


def response_of(generated: str, template: str = "alpaca") -> str:
  """The part of a decoded text after the last response marker (the prediction)."""
  marker = response_marker(template)
  i = generated.rfind(marker)
  return generated if i < 0 else generated[i + len(marker):]
