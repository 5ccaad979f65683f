"""The converter: Hugging Face checkpoints (safetensors) to GGUF, nothing else. Installed as glm4_local.convert.

Uses the core only; never the chat side or a front-end."""
