"""The fronts: how clients reach the engine. Only this package imports the MCP SDK, Starlette and uvicorn.

- `mcp_server.McpFront`: the MCP server (its tools in `mcp_tools`, their results and errors in `tool_results`);
- `serve`: running the MCP front over stdio or streamable HTTP (`/mcp`), with graceful shutdown;
- the HTTP app with the OpenAI- and Anthropic-compatible APIs, probes and metrics (`http_app` and its modules).

Nothing outside `proxy.fronts` and the CLI imports from here.
"""
