"""Who is calling: credentials (API keys, JWTs), roles and permissions."""
