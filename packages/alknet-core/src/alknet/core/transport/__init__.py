"""alknet.core.transport"""
