"""kafka/stages"""
