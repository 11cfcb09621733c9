"""A small dual-era MCP server with tools, resources, a template, prompts and completion.

It ships with fedmcp so the example configuration works on a fresh machine.
"""

from __future__ import annotations

import sys

import mcp_types as types
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("fedmcp-demo", version="0.1.0", instructions="Demo tools for trying fedmcp.")

NOTES = {"welcome": "Welcome to fedmcp.", "federation": "Many MCP servers, one endpoint."}


READ_ONLY = types.ToolAnnotations(read_only_hint=True)
"""Both tools only compute: safe to run again, which lets the gateway retry and skip its accept."""


@mcp.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool(annotations=READ_ONLY)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.resource("notes://index", mime_type="text/plain")
def index() -> str:
    """The names of all notes."""
    return "\n".join(sorted(NOTES))


@mcp.resource("notes://{name}", mime_type="text/plain")
def note(name: str) -> str:
    """One note by name."""
    return NOTES.get(name, f"no note called {name}")


@mcp.prompt()
def summarize(topic: str) -> str:
    """Ask for a summary of a topic."""
    return f"Please summarize {topic} in three sentences."


@mcp.completion()  # type: ignore[untyped-decorator,no-untyped-call]  # the SDK leaves it untyped
async def complete(
    ref: types.PromptReference | types.ResourceTemplateReference,
    argument: types.CompletionArgument,
    context: types.CompletionContext | None,
) -> types.Completion | None:
    """Note names for `notes://{name}`, topics for `summarize`."""
    if isinstance(ref, types.ResourceTemplateReference):
        pool = sorted(NOTES)
    else:
        pool = ["federation", "model context protocol", "nats"]
    return types.Completion(values=[v for v in pool if v.startswith(argument.value)])


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        mcp.run()
    else:
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))


if __name__ == "__main__":
    main()
