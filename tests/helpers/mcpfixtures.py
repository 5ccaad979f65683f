"""A small MCP server of the tests' own (the official SDK), run as `python server.py NAME`."""

from __future__ import annotations

SERVER = '''
import os, sys
from mcp.server.mcpserver import MCPServer

server = MCPServer(sys.argv[1])


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def echo_env() -> str:
    """The server's GREETING variable."""
    return os.environ.get("GREETING", "")


@server.tool()
def fail() -> str:
    """Always raises."""
    raise ValueError("no luck")


@server.tool()
def crash() -> str:
    """Ends the server."""
    os._exit(3)


@server.tool()
def big(n: int) -> str:
    """n characters of text."""
    return "x" * n


if len(sys.argv) > 2:  # over HTTP, on 127.0.0.1 only
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
else:
    server.run()
'''
