"""mcp-llm-proxy: a declarative, YAML-configured LLM proxy served over MCP and HTTP."""

__version__ = "0.1.0"
