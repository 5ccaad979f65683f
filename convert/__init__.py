"""The converter: Hugging Face GLM-4 checkpoints (safetensors) to GGUF. Installed as glm4_local.convert."""
