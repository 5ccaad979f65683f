"""Tools the model calls, run on the user's machine: today the user's own program (`--tool-exec`,
program.py). GLM-4's built-in tools (python, simple_browser) come here, one module each, and so do MCP
servers. A tool knows nothing of terminals or HTTP: front-ends and the server show its results.

Uses the core only."""
