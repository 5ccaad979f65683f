"""The door to llama.cpp: the only modules that import llama_cpp (loading, tokens, logits, quantizing,
the continuous-batching decoder, its samplers, activation collection)."""
