"""GGUF to GGUF: info (summary), repair and its byte-for-byte rewrite, the tokenizer check, eval and
verify (with the divergence maths they share). Uses the core, the converter's checkpoint reader and
chat's template check."""
