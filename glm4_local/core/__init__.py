"""The shared core: errors, atomic files, GGUF headers, model families, and the one door to llama.cpp.

It imports nothing from chat/, convert/ or the front-ends."""
