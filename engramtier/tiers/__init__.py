"""engramtier.tiers"""
