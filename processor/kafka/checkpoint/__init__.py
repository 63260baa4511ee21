"""kafka/checkpoint"""
