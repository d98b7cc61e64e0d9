"""The draft-data folders every head of a run trains on (engine format, cached): which sources, how many."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError
from effrepro.specdec import DraftDataConfig
from effrepro.specdec.draft_data import check_chat_template, check_sharegpt


@dataclass(frozen=True)
class DataSettings:
    prompts: int = 96  # corpus instructions answered by the target (self-distillation; jakiro.data)
    max_new_tokens: int = 128  # answer length of the self-distilled data
    sharegpt: int = 0  # the engine's shipped "ShareGPT" (fastchat's dummy identity set; off: see jakiro.data)
    max_len: int = 1024
    sharegpt_json: str = ""  # full scale: a ShareGPT json file (the official 68k conversations)
    sharegpt_limit: int = 68000
    chat_template: str = "auto"  # the tokenizer's own; else an fschat template name (full scale: vicuna_v1.1)

    def __post_init__(self) -> None:
        """The checks that need no model (before any work): the template name, the ShareGPT file, the count of
        the shipped set."""
        check_chat_template(self.chat_template)
        if self.sharegpt_json and not Path(self.sharegpt_json).expanduser().is_file():
            raise UsageError(f"ShareGPT file {self.sharegpt_json} not found; give the path of "
                             "ShareGPT_V4.3_unfiltered_cleaned_split.json")
        check_sharegpt(DraftDataConfig(sharegpt=self.sharegpt))


def build_draft_data(data: DataSettings, target: str, model: Any, tokenizer: Any, seed: int = 0,
                     progress: bool = True) -> list[Path]:
    """The draft-data folders (engine format) every head trains on (cached)."""
    from effrepro.specdec import draft_data_folders

    from jakiro.data import corpus_prompt_data, encode_sharegpt_file

    folders: list[Path] = []
    if data.sharegpt_json:
        folders.append(encode_sharegpt_file(model, tokenizer, data.sharegpt_json, max_len=data.max_len,
                                            limit=data.sharegpt_limit, chat_template=data.chat_template,
                                            progress=progress))
    if data.prompts:
        folders.append(corpus_prompt_data(model, tokenizer, data.prompts, data.max_new_tokens, data.max_len,
                                          seed=seed, progress=progress, chat_template=data.chat_template))
    if data.sharegpt:
        config = DraftDataConfig(target=target, sharegpt=data.sharegpt, max_len=data.max_len,
                                 chat_template=data.chat_template)
        folders += draft_data_folders(model, tokenizer, config, progress=progress)
    if not folders:
        raise UsageError("no draft data selected; set prompts, sharegpt or sharegpt_json")
    return folders
