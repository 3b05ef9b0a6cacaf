"""NeuronMCP, reference build: an MCP server (JSON-RPC 2.0) over stdio, optionally HTTP."""
