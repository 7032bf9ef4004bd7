"""engramtier.model"""
