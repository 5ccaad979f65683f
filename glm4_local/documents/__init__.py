"""Documents read into the conversation (long documents): a reader per file type (`readers.READERS`),
and GLM-4's document form for the user message (`form`). Uses the core only."""
