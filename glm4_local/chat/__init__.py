"""Chatting with a model: engine, runtime, template, the tool program runner, sessions, model lookup, options.

Uses the core only; never the converter or a front-end."""
