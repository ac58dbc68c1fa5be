"""The network: names -> frozen spec -> module (net), and what it costs (profile, memory)."""
