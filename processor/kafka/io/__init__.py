"""kafka/io"""
