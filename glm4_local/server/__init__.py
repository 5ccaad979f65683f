"""The OpenAI-compatible HTTP server (glm4-local serve)."""
