"""Model families: every fact about one kind of model (family.py), GLM-4-9B's (glm4*.py), the registry,
and each family's reply format (replies.py). Adding a family: its modules and one line in registry.FAMILIES."""
