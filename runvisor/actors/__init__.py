"""The processes: the actor base, the embedded server, and one package per role (agent, tools, supervisor)."""
