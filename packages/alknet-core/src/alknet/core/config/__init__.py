"""alknet.core.config"""
