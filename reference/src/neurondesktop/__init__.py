"""NeuronDesktop API, reference build: profiles, authentication, and gateways to the agent and NeuronMCP."""
