"""glm4-local: THUDM GLM-4-9B-Chat on your own machine, through llama.cpp."""

__version__ = "0.1.0"
