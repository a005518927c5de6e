"""The tokenizer/chat-template files of an HF checkpoint directory (its config.json: models/families.py)."""
from __future__ import annotations

import os
import shutil

# Files that carry the tokenizer/chat template and generation defaults, copied along with the weights.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copy the tokenizer/generation files present in `src` to `dst`; returns the names copied."""
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied
