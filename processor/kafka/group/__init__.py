"""kafka/group"""
