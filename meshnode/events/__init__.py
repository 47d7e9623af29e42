"""User events (serf's fire-and-forget broadcasts) and the handler scripts they run.

Must not import the agent, the proxies, DNS or the CA.
"""
