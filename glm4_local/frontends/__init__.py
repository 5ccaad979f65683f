"""Front-ends: the terminal REPL, one-shot answers, command functions, doctor, progress bars."""
