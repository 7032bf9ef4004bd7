"""engramtier.analysis"""
