"""kafka/durable"""
