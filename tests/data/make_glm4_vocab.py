"""Regenerate tests/data/glm4-9b-chat-vocab.gguf from GLM-4-9B-Chat's tokenizer.model.

    python tests/data/make_glm4_vocab.py ../shared/glm4-reference/glm-4-9b-chat/tokenizer.model

The file holds only the vocabulary (token texts in GGUF's byte-level form, in rank order, and
token types): exactly the information of tokenizer.model, which tests/helpers/factory.py rebuilds from it
(and checks against the published sha256) so that the exactness tests run on a fresh clone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf

from glm4_local.convert.vocab import build_vocabulary
from glm4_local.core.families.glm4 import GLM4_9B

OUT = Path(__file__).with_name("glm4-9b-chat-vocab.gguf")
VOCAB_SIZE = 151552


def main(tokenizer_model: Path) -> None:
    vocab = build_vocabulary(GLM4_9B, tokenizer_model, {}, VOCAB_SIZE)
    writer = gguf.GGUFWriter(OUT, GLM4_9B.arch_name)
    writer.add_name("glm-4-9b-chat vocabulary (tokenizer.model, GLM-4 license)")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GLM4_9B.pre_tokenizer)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    print(OUT, OUT.stat().st_size)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
