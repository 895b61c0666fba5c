"""Step 3: an LLM from the registry rewrites template instructions for fluency.

The rewrite must keep every condition and reference and must not give the answer away: the
same leak check as the templates applies. A leaking, empty, runaway or multi-instruction
answer falls back to the template, and each fallback is counted by reason.
"""

from __future__ import annotations

from collections import Counter

SYSTEM_PROMPT = (
    "You rewrite image-editing instructions so they read naturally. Keep every condition, object "
    "reference, relation and number exactly; do not add new edits; never state the answer to any "
    "question the instruction depends on. Reply with the rewritten instruction only, on one line."
)


def rewrite_instructions(adapter, planned_rows, config) -> tuple[list[str], Counter]:
    """Rewritten prompts in input order (template where the rewrite was refused) and fallbacks."""
    from uniedit_cli.synth.instructions import check_leak

    templates = [p.instruction.edit_prompt for p in planned_rows]
    fallbacks: Counter = Counter()
    try:
        answers = []
        for start in range(0, len(templates), config.batch_size):
            answers += adapter.rewrite(templates[start:start + config.batch_size], system=SYSTEM_PROMPT,
                                       max_new_tokens=min(256, 2 * max(len(t.split()) for t in templates) + 32),
                                       temperature=0.0)
    except Exception as exc:  # noqa: BLE001 - the templates are always a valid result
        fallbacks[f"error_{type(exc).__name__}"] += len(templates)
        return templates, fallbacks
    out = []
    for planned, template, answer in zip(planned_rows, templates, answers):
        reason = garbled(answer, template)
        if reason is None and check_leak(answer, planned.instruction.process_answer):
            reason = "leak"
        if reason is None:
            out.append(_clean(answer))
        else:
            fallbacks[reason] += 1
            out.append(template)
    return out, fallbacks


def _clean(text: str) -> str:
    text = text.strip().strip('"').strip()
    for prefix in ("Rewritten instruction:", "Instruction:", "Rewritten:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    return text


_STOP = frozenset("""a an the and or but if then else otherwise of to in on at by for with from into onto it its
is are be was were this that these those there their them they so as not no do does any some one all each
make change turn give keep leave nothing image picture scene please new""".split())
MIN_CONTENT_KEPT = 0.7


def content_words(text: str) -> set[str]:
    """Words that carry the edit: objects, attributes, numbers (crude singular form)."""
    import re

    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in _STOP or (len(word) < 3 and not word.isdigit()):
            continue
        words.add(word[:-1] if word.endswith("s") and len(word) > 3 else word)
    return words


def garbled(answer: str, template: str) -> str | None:
    """Why a rewrite cannot be used, or None. A fluent rewrite keeps the template's content
    words (every object, attribute and value, both branches of a conditional); dropping them
    changes the edit, and an untrained or confused model drops them."""
    text = _clean(answer or "")
    if not text:
        return "empty"
    if "\n" in text.strip():
        return "multiline"
    if len(text) > 3 * len(template) + 40:
        return "too_long"
    if len(text) < max(8, len(template) // 4):
        return "too_short"
    wanted = content_words(template)
    if wanted and len(wanted & content_words(text)) / len(wanted) < MIN_CONTENT_KEPT:
        return "lost_content"
    return None
