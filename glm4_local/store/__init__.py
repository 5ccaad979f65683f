"""The model store: GGUFs pulled from the Hugging Face Hub (checked, repaired), listed and removed."""
