"""NeuronAgent, reference build: the agent API of NeuronDB (see /usr/share/doc/neuronagent)."""
