"""engramtier.cache"""
