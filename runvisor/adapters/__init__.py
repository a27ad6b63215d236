"""Adapters that attach runvisor to an agent framework in one line, each an optional extra.

- ``runvisor.adapters.pydantic_ai`` (``pip install runvisor[pydantic-ai]``)
- ``runvisor.adapters.openai_agents`` (``pip install runvisor[openai-agents]``)
- ``runvisor.adapters.langgraph`` (``pip install runvisor[langgraph]``)

Importing ``runvisor`` never imports a framework; importing an adapter without its extra
raises an ImportError that names the extra to install.
"""
