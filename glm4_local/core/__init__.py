"""The shared core: small utilities here (errors, atomic files, JSON files, paths, progress), and one
sub-package a concern: families/ (model facts), gguf/ (GGUF files), llama/ (the door to llama.cpp).

It imports nothing from the converter, chat, the GGUF tools, the server or the front-ends."""
