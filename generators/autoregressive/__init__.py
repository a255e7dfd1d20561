"""A small autoregressive transformer over Wyckoff token sequences, trained in this repo.

Modules: :mod:`.tokenizer` (crystal <-> tokens), :mod:`.model` (the decoder-only transformer),
:mod:`.train` (the training command) and :mod:`.generator` (the Generator behind the registry).
"""

from __future__ import annotations
