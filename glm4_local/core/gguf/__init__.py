"""GGUF files: the header reader, every check llama.cpp would abort on, what repair fixes, BPE merges,
and writing a GGUF in pieces. Uses the families; never llama.cpp."""
