"""The service catalog and health checks, kept in the replicated store.

Services and checks are owned by the agent that registered them; every agent
holds all of them and answers catalog and health reads from memory.
"""
