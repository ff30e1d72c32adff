"""The process boundary: the runners (in this process, or the backend trainer process), the
backend server and its HTTP client. Imports the engine; never the node types."""
