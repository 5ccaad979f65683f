"""Chatting with a model: engine, runtime, template, tool calls, sessions, model lookup, options.

Uses the core only; never the converter or a front-end."""
