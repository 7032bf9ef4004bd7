"""engramtier.trace"""
