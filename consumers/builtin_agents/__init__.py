"""YAML definitions of the built-in agents (see ``consumers.llm_agent``)."""
